"""Mean residual activations per layer and token position, streamed over batches in float64.

Hooks keep only the requested positions of the requested sites and sum them into one
accumulator, so memory stays n_layers x n_pos x d_model however many prompts there are."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from failclosed_interp.batching import AdaptiveBatchSize
from failclosed_interp.chat import Batch, batches, tokenize_prompts
from failclosed_interp.interventions import Intervention, Site, hook_name, intervene
from failclosed_interp.models import ChatModel


def capture_hook(accumulator: Float[Tensor, "n_pos d_model"], positions: tuple[int, ...]):
    """Adds the batch-sum of x[:, positions] into `accumulator` (float64); the activation passes unchanged."""
    index = list(positions)

    def hook(x: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        accumulator.add_(x[:, index].detach().double().sum(0))
        return x

    return hook


def forward_without_logits(model: ChatModel, batch: Batch) -> None:
    """Run the model for its hooks; the HF path computes only the last position's logits (cheaper LM head)."""
    if model.hf_model is not None:
        model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1)
    else:
        model.bridge(batch.input_ids, attention_mask=batch.attention_mask)


def check_positions(positions: Sequence[int]) -> tuple[int, ...]:
    """Token positions as a tuple of negative indices (counted from the prompt's end); errors name the bad ones."""
    positions = tuple(int(p) for p in positions)
    if not positions:
        raise ValueError("no token positions given; use e.g. chat.post_instruction_positions(model)")
    if any(p >= 0 for p in positions):
        raise ValueError(
            f"positions must be negative (counted from the prompt's end, valid under left padding), got {positions}"
        )
    return positions


def check_layer_choice(layers: Sequence[int], what: str = "layers") -> tuple[int, ...]:
    """A chosen subset of layer indices: nonempty, distinct, >= 0 (their upper bound depends on the model)."""
    layers = tuple(int(layer) for layer in layers)
    if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
        raise ValueError(f"{what} must be distinct layer indices >= 0 (or None for all), got {layers}")
    return layers


@torch.no_grad()
def mean_activations(
    model: ChatModel,
    instructions: Sequence[str],
    *,
    positions: Sequence[int],
    layers: Sequence[int] | None = None,
    site: Site = "resid_pre",
    batch_size: int = 16,
    interventions: Sequence[Intervention] = (),
    progress: bool = False,
) -> Float[Tensor, "n_layers n_pos d_model"]:
    """Mean activation at `site` of each of `layers` (all when None) at each of `positions`, over
    chat-formatted `instructions`, with `interventions` applied (float64, CPU)."""
    if not instructions:
        raise ValueError("the prompt set is empty: give at least one prompt")
    positions = check_positions(positions)
    layers = tuple(range(model.n_layers)) if layers is None else tuple(layers)
    bad = [layer for layer in layers if not 0 <= layer < model.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {list(layers)} invalid: give a nonempty subset of 0..{model.n_layers - 1}")

    def run(size: int) -> Tensor:
        sums = torch.zeros(len(layers), len(positions), model.d_model, dtype=torch.float64, device=model.device)
        capture = [(hook_name(layer, site), capture_hook(sums[i], positions)) for i, layer in enumerate(layers)]
        chunks = list(batches(list(instructions), size))
        # Interventions are registered first, so at a shared site the capture sees the intervened activation.
        with intervene(model, interventions), model.bridge.hooks(fwd_hooks=capture):
            for chunk in tqdm(chunks, desc="activations", disable=not progress, leave=False):
                batch = tokenize_prompts(model, chunk)
                shortest = int(batch.attention_mask.sum(-1).min())
                if -min(positions) > shortest:
                    raise ValueError(
                        f"position {min(positions)} reaches past the start of a {shortest}-token prompt; use "
                        f"positions within the chat template's trailing tokens (chat.post_instruction_positions)"
                    )
                forward_without_logits(model, batch)
        return sums

    means = (AdaptiveBatchSize(batch_size, "activation batch").run(run) / len(instructions)).cpu()
    nonfinite = [layer for layer, m in zip(layers, means) if not torch.isfinite(m).all()]
    if nonfinite:
        raise ValueError(
            f"{site} activations at layer(s) {nonfinite} contain NaN or inf; check the model weights, dtype "
            f"(bf16/fp16 can overflow: try float32) and the interventions applied"
        )
    return means
