"""`TrainConfig`: the settings of one LoRA training run inside the hooked model, validated and JSON-able."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from failclosed_interp.adapters import LoraSettings
from failclosed_interp.configs import JsonConfig

UTILITY_LOSSES = ("ce", "kl")


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """LoRA training settings.

    `max_length` bounds prompt + answer tokens: longer examples lose the end of their answer, and an
    example whose prompt alone reaches it is an error. `utility_loss` trains utility examples either
    with cross-entropy on their answers ("ce") or as `kl_weight` x KL(reference || model) on the answer
    tokens ("kl"), the reference being the same model with its adapters disabled."""

    epochs: int = 3
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_length: int = 256
    utility_loss: str = "ce"  # "ce" or "kl"; plain str so bad values reach our ValueError, also under beartype
    kl_weight: float = 1.0
    first_token_weight: float = 1.0  # loss weight of each answer's first token, where refusal is decided
    seed: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)
    gradient_checkpointing: bool = False  # recompute activations in backward: for large models on one GPU

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}; try 8")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}; LoRA usually wants 1e-4 .. 1e-3")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}; use 0.0 to switch it off")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}; use 0 for no warmup")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}; 1.0 is the usual value")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (prompt + at least one answer token), got {self.max_length}")
        if self.utility_loss not in UTILITY_LOSSES:
            raise ValueError(f"utility_loss must be one of {UTILITY_LOSSES}, got {self.utility_loss!r}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if not (math.isfinite(self.first_token_weight) and self.first_token_weight > 0):
            raise ValueError(f"first_token_weight must be > 0, got {self.first_token_weight}; 1.0 weighs every answer token alike")
        if not isinstance(self.gradient_checkpointing, bool):
            raise TypeError(f"gradient_checkpointing must be True or False, got {self.gradient_checkpointing!r}")
        if not isinstance(self.lora, LoraSettings):
            raise TypeError(f"lora must be a LoraSettings, got {type(self.lora).__name__}; use LoraSettings(r=..., ...)")
