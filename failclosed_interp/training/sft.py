"""Refusal SFT, the "standard alignment" baseline: teach a model to refuse the built-in harmful TRAIN
prompts while self-distilling its answers to harmless and borderline ones. One run = one folder:
adapter/ (PEFT format), sft_config.json, examples.json, training.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from failclosed_interp.artifacts import write_json
from failclosed_interp.configs import JsonConfig
from failclosed_interp.adapters import save_adapter
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.models import EMBEDDED_MODEL, ChatModel, load_model
from failclosed_interp.prompts import builtin
from failclosed_interp.training.config import TrainConfig
from failclosed_interp.training.data import Example, build_sft_examples
from failclosed_interp.training.trainer import TrainResult, train_lora

CONFIG_FILE = "sft_config.json"
EXAMPLES_FILE = "examples.json"
TRAINING_FILE = "training.json"
ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class SFTConfig(JsonConfig):
    """Which model, how many built-in TRAIN prompts of each kind, how long the self-distilled answers
    are (`answer_tokens`), and the training settings. `seed` picks the prompt subsets and the LoRA init."""

    model: str = EMBEDDED_MODEL
    # Utility held to the untrained model by KL (weight 10) keeps answers to harmless prompts, and so
    # over-refusal, close to the untrained model's; this learning rate gets the refusal loss down in 3 epochs.
    n_harmful: int = 64
    n_harmless: int = 64
    n_borderline: int = 32
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-3, utility_loss="kl", kl_weight=10.0))
    answer_tokens: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.n_harmful < 1:
            raise ValueError(f"n_harmful must be >= 1 (refusal SFT needs harmful prompts), got {self.n_harmful}")
        for name in ("n_harmless", "n_borderline"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}; use 0 to leave that set out")
        if self.answer_tokens < 1:
            raise ValueError(f"answer_tokens must be >= 1, got {self.answer_tokens}; 48 is a good default")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(self.train).__name__}")


@dataclass
class SFTResult:
    """The trained model (loaded, eval mode) and where the run folder's parts are."""

    model: ChatModel
    out_dir: Path
    adapter_dir: Path
    examples: list[Example]
    training: TrainResult


def sft_prompts(config: SFTConfig) -> tuple[list[str], list[str], list[str]]:
    """The harmful, harmless and borderline TRAIN prompts this config trains on."""

    def take(kind: str, n: int) -> list[str]:
        return builtin(kind, "train").take(n, seed=config.seed).to_list() if n else []

    return take("harmful", config.n_harmful), take("harmless", config.n_harmless), take("borderline", config.n_borderline)


def fresh_lora_model(config: SFTConfig, device: str | None = None) -> ChatModel:
    """`config.model` with a fresh trainable LoRA whose initialisation depends only on `config.seed`."""
    with torch.random.fork_rng(devices=[]):  # the LoRA init draws from the global RNG
        torch.manual_seed(config.seed)
        return load_model(config.model, lora=config.train.lora, seed=config.seed, device=device)


def run_sft(config: SFTConfig, out_dir: str | Path, *, model: ChatModel | None = None, progress: bool = True) -> SFTResult:
    """Build examples from the model's own answers, train, save the run (config, examples, curves, adapter).

    `model`: a model from `fresh_lora_model(config)`, e.g. one already used to measure the base model
    (its LoRA is still zero); by default one is loaded."""
    out_dir = Path(out_dir)
    harmful, harmless, borderline = sft_prompts(config)
    write_json(out_dir / CONFIG_FILE, config.to_dict())
    model = fresh_lora_model(config) if model is None else model
    generation = GenerationConfig(max_new_tokens=config.answer_tokens)
    examples = build_sft_examples(model, harmful, harmless, borderline, generation=generation, progress=progress)
    write_json(out_dir / EXAMPLES_FILE, [e.to_dict() for e in examples])
    result = train_lora(model, examples, config.train, progress=progress)
    write_json(out_dir / TRAINING_FILE, result.to_dict())
    adapter_dir = save_adapter(model, out_dir / ADAPTER_DIR, config.train.lora)
    return SFTResult(model=model, out_dir=out_dir, adapter_dir=adapter_dir, examples=examples, training=result)
