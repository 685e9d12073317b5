"""LoRA adapters in PEFT's own format: inject into a HF model before the bridge boots, save, load.

Saved adapters (adapter_config.json + adapter_model.safetensors) load in plain transformers+peft
(`PeftModel.from_pretrained(base, dir)`), vLLM and this toolkit alike."""

from __future__ import annotations

import dataclasses
import hashlib

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict

from failclosed_interp.artifacts import check_identity, read_tensors, write_identity, write_json, write_tensors

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_BRIDGE_WRAPPER = "._original_component"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters: rank `r`, scaling `alpha`, dropout and the projection modules it adapts."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ALL_PROJECTIONS

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if not self.targets:
            raise ValueError("LoRA targets is empty; name the projections to adapt, e.g. q_proj,v_proj")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    def to_peft(self) -> LoraConfig:
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
            target_modules=list(self.targets), bias="none", task_type="CAUSAL_LM",
        )

    def with_rank(self, r: int) -> LoraSettings:
        """These settings at rank `r`, with `alpha` scaled to keep alpha / r (the update's scale) unchanged."""
        return dataclasses.replace(self, r=r, alpha=max(1, round(self.alpha * r / self.r)))


def inject_lora(hf_model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """Add fresh LoRA layers (B = 0, so logits are unchanged) and freeze everything else."""
    present = {name.rsplit(".", 1)[-1] for name, _ in hf_model.named_modules()}
    missing = [t for t in settings.targets if t not in present]
    if missing:
        raise ValueError(f"LoRA targets {missing} are not modules of this model; it has e.g. {sorted(present)[:12]}")
    inject_adapter_in_model(settings.to_peft(), hf_model)
    for name, param in hf_model.named_parameters():
        param.requires_grad_("lora_" in name)
    return hf_model


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable LoRA parameters of `model` (those named `lora_*`)."""
    return [p for n, p in model.named_parameters() if "lora_" in n]


def _portable_state_dict(hf_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's key names, as if the model had never been wrapped by a bridge."""
    state = get_peft_model_state_dict(hf_model)
    return {_PEFT_PREFIX + k.replace(_BRIDGE_WRAPPER, ""): v for k, v in state.items()}


def save_adapter(model, folder: str | Path, settings: LoraSettings) -> Path:
    """Save the LoRA weights of a ChatModel in PEFT format, plus the model identity."""
    folder = Path(folder)
    state = _portable_state_dict(model.hf_model)
    if not state:
        raise ValueError("this model has no LoRA layers to save; load it with lora=LoraSettings(...)")
    config = settings.to_peft()
    config.base_model_name_or_path = model.name
    config_dict = config.to_dict()
    config_dict = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config_dict.items()}
    write_tensors(folder / _WEIGHTS, state, metadata={"format": "pt"})
    write_json(folder / _CONFIG, config_dict)
    write_identity(folder, model.identity())
    return folder


def read_lora_settings(folder: str | Path) -> LoraSettings:
    """The `LoraSettings` an adapter folder was saved with (read from its PEFT config)."""
    folder = Path(folder)
    path = folder / _CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a LoRA adapter folder: {_CONFIG} is missing")
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{folder} holds a {cfg['peft_type']} adapter; only LoRA is supported")
    targets = cfg["target_modules"]
    return LoraSettings(
        r=cfg["r"], alpha=cfg["lora_alpha"], dropout=cfg.get("lora_dropout", 0.0),
        targets=tuple(sorted(targets) if isinstance(targets, (list, set)) else [targets]),
    )


def load_adapter(hf_model: torch.nn.Module, folder: str | Path, expected_model: str) -> torch.nn.Module:
    """Inject the adapter saved in `folder` into an unwrapped HF model (before the bridge boots)."""
    folder = Path(folder)
    settings = read_lora_settings(folder)
    cfg = hf_model.config
    check_identity(
        folder,
        {"model": expected_model, "d_model": cfg.hidden_size, "n_layers": cfg.num_hidden_layers},
        what="the LoRA adapter",
    )
    state = read_tensors(folder / _WEIGHTS)
    inject_lora(hf_model, settings)
    stripped = {k.removeprefix(_PEFT_PREFIX): v for k, v in state.items()}
    expected_shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(hf_model).items()}
    for key, value in stripped.items():
        if key not in expected_shapes or expected_shapes[key] != tuple(value.shape):
            raise ValueError(
                f"the adapter in {folder} does not match this model: tensor {key} "
                f"{tuple(value.shape)} vs expected {expected_shapes.get(key, 'absent')}. "
                f"Load the base model it was trained on."
            )
    result = set_peft_model_state_dict(hf_model, stripped)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"the adapter in {folder} has tensors this model lacks: {result.unexpected_keys[:3]}")
    return hf_model


def settings_dict(settings: LoraSettings) -> dict:
    """`settings` as a JSON-ready dict."""
    return asdict(settings)


def adapter_digest(adapter: str | Path | None) -> str | None:
    """A digest of the bytes of every file in an adapter folder (None without an adapter): an adapter trained
    again in the same folder is another model."""
    if adapter is None:
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in Path(adapter).rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(adapter)}:{path.stat().st_size}:".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
