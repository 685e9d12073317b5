"""LoRA training inside the hooked model: refusal SFT (the standard-alignment baseline), and the
progressive fail-closed loop (safety batches under ablation) on the same trainer."""

from failclosed_interp.training.config import TrainConfig
from failclosed_interp.training.data import (
    DEFAULT_REFUSALS,
    IGNORE,
    Example,
    TokenizedExamples,
    build_sft_examples,
    tokenize_examples,
)
from failclosed_interp.training.sft import SFTConfig, SFTResult, fresh_lora_model, run_sft, sft_prompts
from failclosed_interp.training.trainer import (
    TrainResult,
    adapters_disabled,
    answer_cross_entropy,
    answer_kl,
    train_lora,
)

__all__ = [
    "DEFAULT_REFUSALS",
    "IGNORE",
    "Example",
    "SFTConfig",
    "SFTResult",
    "TokenizedExamples",
    "TrainConfig",
    "TrainResult",
    "adapters_disabled",
    "answer_cross_entropy",
    "answer_kl",
    "build_sft_examples",
    "fresh_lora_model",
    "run_sft",
    "sft_prompts",
    "tokenize_examples",
    "train_lora",
]
