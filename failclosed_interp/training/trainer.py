"""LoRA training inside the hooked model. Each step pairs a safety batch (trained under the given
interventions, e.g. ablation of the refusal directions found so far) with a utility batch (trained
without them, by cross-entropy or by KL to the frozen reference = the same model, adapters off)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor
from tqdm.auto import tqdm

from failclosed_interp.adapters import lora_parameters
from failclosed_interp.batching import AdaptiveBatchSize
from failclosed_interp.chat import batches
from failclosed_interp.distributed import DataParallel, data_parallel
from failclosed_interp.interventions import Intervention, intervene
from failclosed_interp.models import ChatModel
from failclosed_interp.training.config import TrainConfig
from failclosed_interp.training.data import (
    IGNORE, Example, ReferenceLogProbs, answer_logits, collate, example_token_ids,
)

StepCallback = Callable[[int, dict], None]


@dataclass(frozen=True)
class TrainResult:
    """Per-step losses: dicts with step, epoch, lr, total, safety, utility (None when absent)."""

    steps: int
    losses: list[dict]
    seconds: float

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds, "losses": self.losses}


@contextmanager
def adapters_disabled(hf_model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the base model: switch off every LoRA layer, and restore each layer's state (and the
    adapters' requires_grad flags, which peft flips when toggling) on exit, also after an error."""
    layers = [m for m in hf_model.modules() if isinstance(m, BaseTunerLayer)]
    was_disabled = [layer.disable_adapters for layer in layers]
    grads = {id(p): p.requires_grad for layer in layers for p in layer.parameters()}
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield hf_model
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.enable_adapters(not disabled)
        for layer in layers:
            for p in layer.parameters():
                p.requires_grad_(grads[id(p)])


def answer_token_weights(labels: Int[Tensor, "batch pos"], first_token_weight: float = 1.0) -> Float[Tensor, "n_answer"]:
    """One weight per answer token (labels != IGNORE, in row-major order): `first_token_weight` for the
    first answer token of each row, where the model decides whether to refuse, and 1 for the rest."""
    keep = labels[:, 1:] != IGNORE
    first = keep & (keep.cumsum(dim=1) == 1)
    return torch.where(first[keep], first_token_weight, 1.0).float()


def answer_cross_entropy(
    logits: Float[Tensor, "batch pos d_vocab"],
    labels: Int[Tensor, "batch pos"],
    first_token_weight: float = 1.0,
    total_weight: float | None = None,
) -> Float[Tensor, ""]:
    """Weighted mean next-token cross-entropy over the answer tokens (labels != IGNORE). `total_weight`:
    divide by this instead of this batch's own weight (the whole batch's, when this is one rank's share)."""
    target = labels[:, 1:]
    keep = target != IGNORE
    per_token = F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="none")
    weights = answer_token_weights(labels, first_token_weight)
    return (per_token * weights).sum() / (weights.sum() if total_weight is None else total_weight)


def answer_kl(
    reference_logp: Float[Tensor, "n_answer d_vocab"],
    logits: Float[Tensor, "batch pos d_vocab"],
    labels: Int[Tensor, "batch pos"],
    first_token_weight: float = 1.0,
    total_weight: float | None = None,
) -> Float[Tensor, ""]:
    """Weighted mean KL(reference || model) of the next-token distributions that predict answer tokens;
    `reference_logp` holds the reference's log-probs at those positions, in row-major order
    (`ReferenceLogProbs`); `total_weight` as in `answer_cross_entropy`."""
    keep = labels[:, 1:] != IGNORE
    ref = reference_logp.to(logits.device)
    cur = torch.log_softmax(logits[:, :-1][keep].float(), -1)
    per_token = F.kl_div(cur, ref, log_target=True, reduction="none").sum(-1)
    weights = answer_token_weights(labels, first_token_weight)
    return (per_token * weights).sum() / (weights.sum() if total_weight is None else total_weight)


@contextmanager
def _reference_model(model: ChatModel) -> Iterator[None]:
    """The KL reference: the same model in eval mode with its adapters off."""
    model.bridge.eval()
    try:
        with adapters_disabled(model.hf_model):
            yield
    finally:
        model.bridge.train()


def _plan(n_safety: int, n_utility: int, config: TrainConfig) -> list[tuple[int, list[int], list[int]]]:
    """(epoch, safety indices, utility indices) per step. An epoch has as many steps as the larger kind
    has batches; the smaller kind's batches repeat in order, so every step sees both kinds."""
    gen = torch.Generator().manual_seed(config.seed)
    plan = []
    for epoch in range(config.epochs):
        per_kind = []
        for n in (n_safety, n_utility):
            order = torch.randperm(n, generator=gen).tolist()
            per_kind.append([order[i : i + config.batch_size] for i in range(0, n, config.batch_size)])
        safety, utility = per_kind
        for i in range(max(len(safety), len(utility))):
            plan.append((epoch, safety[i % len(safety)] if safety else [], utility[i % len(utility)] if utility else []))
    return plan


def _check_finite(value: float, step: int, what: str, config: TrainConfig) -> None:
    if not math.isfinite(value):
        raise ValueError(
            f"the {what} became {value} at step {step}; training diverged. Lower the learning rate "
            f"(lr={config.lr}) or max_grad_norm ({config.max_grad_norm}), and reload the model: its LoRA weights are spoiled"
        )


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed LoRA dropout without touching the caller's global RNG state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def train_lora(
    model: ChatModel,
    examples: Sequence[Example],
    config: TrainConfig = TrainConfig(),
    *,
    safety_interventions: Sequence[Intervention] | Callable[[int], Sequence[Intervention]] = (),
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train the model's LoRA weights in place (AdamW, linear warmup, gradient clipping).

    Safety batches run under `safety_interventions` (or, if it is callable, under
    `safety_interventions(step)`, e.g. a different ablation every step); utility batches run without
    interventions.
    `on_step(step, losses)` is called after every optimiser step. The model is left in eval mode."""
    params = lora_parameters(model.hf_model) if model.hf_model is not None else []
    if not params:
        raise ValueError(f"model {model.name!r} has no LoRA parameters to train; load it with lora=LoraSettings(...)")
    if not examples:
        raise ValueError("no training examples given; build them with build_sft_examples()")
    rows = [example_token_ids(model, e, config.max_length) for e in examples]  # validates lengths up front
    safety = [r for r, e in zip(rows, examples) if e.kind == "safety"]
    utility = [r for r, e in zip(rows, examples) if e.kind == "utility"]
    reference = ReferenceLogProbs(model, utility, lambda: _reference_model(model)) if config.utility_loss == "kl" else None
    plan = _plan(len(safety), len(utility), config)
    group = data_parallel()  # one process, or this rank of an `accelerate launch` / `torchrun` group
    group.broadcast(params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    losses: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(total=len(plan), desc="training", disable=not progress or group.rank > 0, leave=False)
    micro_batch = AdaptiveBatchSize(config.batch_size, "training micro-batch")
    model.bridge.train()
    if config.gradient_checkpointing:  # recompute activations in backward: less memory, ~1/3 more compute
        # Reentrant: the bridge's hooks save a different number of tensors when a layer is recomputed, which
        # non-reentrant checkpointing refuses. Reentrant needs an input that requires grad (the embeddings').
        model.hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
        model.hf_model.enable_input_require_grads()
    try:
        with _seeded(config.seed, model.device):
            for step, (epoch, s_idx, u_idx) in enumerate(plan):
                record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], "safety": None, "utility": None}
                optimizer.zero_grad(set_to_none=True)
                if s_idx:
                    ablate = safety_interventions(step) if callable(safety_interventions) else safety_interventions
                    record["safety"] = _backward_share(model, "safety", [safety[i] for i in s_idx], group, config, step,
                                                       micro_batch, ablate)
                if u_idx:
                    record["utility"] = _backward_share(model, "utility", [utility[i] for i in u_idx], group, config, step,
                                                        micro_batch, reference=_of(reference, u_idx))
                record["total"] = sum(v for v in (record["safety"], record["utility"]) if v is not None)
                group.sum_gradients(params)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
                _check_finite(grad_norm, step, "gradient norm", config)
                optimizer.step()
                scheduler.step()
                losses.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['total']:.4f}")
                if on_step is not None:
                    on_step(step, record)
    finally:
        if config.gradient_checkpointing:
            model.hf_model.activation_checkpointing_disable()
            model.hf_model.disable_input_require_grads()
        model.bridge.eval()
        bar.close()
    return TrainResult(steps=len(plan), losses=losses, seconds=time.perf_counter() - start)


def _of(reference: ReferenceLogProbs | None, idx: Sequence[int]) -> Callable[[Sequence[int]], Tensor] | None:
    """`reference` asked by position within the batch `idx` (None stays None)."""
    return None if reference is None else lambda positions: reference([idx[i] for i in positions])


def _backward_share(
    model: ChatModel,
    kind: str,
    rows: list,
    group: DataParallel,
    config: TrainConfig,
    step: int,
    micro_batch: AdaptiveBatchSize,
    interventions: Sequence[Intervention] = (),
    *,
    reference: Callable[[Sequence[int]], Tensor] | None = None,
) -> float:
    """Backpropagate this rank's share of one batch of `kind` (all of it in a single process), in
    micro-batches of `micro_batch.size` (halved on out-of-memory): safety under `interventions`,
    utility by CE or, with `reference` (log-probs of the batch's rows by position in `rows`), by KL to
    it. Returns the whole batch's loss."""
    mine = group.shard(range(len(rows)))
    # Every micro-batch (and every rank's share) is normalised by the whole batch's answer-token weight,
    # so their summed gradients are the whole batch's.
    total = float(answer_token_weights(collate(model, rows).labels, config.first_token_weight).sum())
    params = [p for p in model.hf_model.parameters() if p.requires_grad]
    before = [None if p.grad is None else p.grad.clone() for p in params]

    def run(size: int) -> float:
        for p, grad in zip(params, before):  # a retry after out-of-memory starts from the gradients before it
            p.grad = None if grad is None else grad.clone()
        value = 0.0
        for chunk in batches(mine, size):
            batch = collate(model, [rows[i] for i in chunk])
            if kind == "safety":
                # backward inside the block: with gradient checkpointing it reruns the hooked forward
                with intervene(model, interventions):
                    loss = answer_cross_entropy(*answer_logits(model, batch), config.first_token_weight, total)
                    loss.backward()
            else:
                logits, labels = answer_logits(model, batch)
                if reference is not None:
                    loss = config.kl_weight * answer_kl(reference(chunk), logits, labels, config.first_token_weight, total)
                else:
                    loss = answer_cross_entropy(logits, labels, config.first_token_weight, total)
                loss.backward()
            value += float(loss.detach())
        return value

    value = group.sum(micro_batch.run(run) if mine else 0.0, model.device)
    _check_finite(value, step, f"{kind} loss", config)  # a non-finite loss on any rank stops every rank
    return value
