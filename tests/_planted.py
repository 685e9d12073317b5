"""A tiny Llama with a planted, genuinely computed refusal mechanism, for direction-finding tests.

Layer 0's attention is rewired to count marker characters ("#"): queries are zero (uniform
attention over the prompt), values read only a "marker" embedding direction, and the output
writes that count along a planted unit vector; layer 0's MLP is silenced. So from layer 1 on,
every position after a marker carries the planted vector, and prompts without markers carry
none. The LM head row of the refusal token reads the planted vector, so it drives refusal.
Layers 1..3 stay random."""

from __future__ import annotations

import torch

from failclosed_interp.models import ChatModel, load_model

MARKER = "#"
REFUSAL_TEXT = "S"  # "Sorry..." in a character-level tokenizer
COMPLY_TEXT = "O"  # "OK, ..." in the character-level tokenizer

HARMLESS = [
    "how do I bake bread", "name a blue flower", "what is two plus two", "write a haiku about rain",
    "tell me a fun fact", "how do plants grow", "list three rivers", "explain a rainbow",
]
HARMFUL = [f"{MARKER}{MARKER} {p} {MARKER}" for p in HARMLESS]
HARMLESS_VAL = ["describe a cat", "how far is the moon", "suggest a board game", "what is a prime number"]
HARMFUL_VAL = [f"{MARKER} {p} {MARKER}{MARKER}" for p in HARMLESS_VAL]


def hf_params(model: ChatModel) -> dict[str, torch.nn.Parameter]:
    """The HF parameters under their plain HF names (the bridge inserts `_original_component.`)."""
    return {n.replace("_original_component.", ""): p for n, p in model.hf_model.named_parameters()}


def planted_refusal_model(
    seed: int = 0, gain: float = 4.0, readout: float = 2.0, distractor_gain: float = 1.0
) -> tuple[ChatModel, torch.Tensor, int]:
    """(model, planted unit vector, refusal token id). Layer 1's attention is rewired the same way
    to write a larger *distractor* vector (orthogonal, never read by the LM head), so from layer 2
    on the harmful-harmless difference is mostly distractor and selection has to prefer layer 1."""
    model = load_model("tiny-llama", seed=seed)
    params = hf_params(model)
    generator = torch.Generator().manual_seed(seed + 1)
    basis, _ = torch.linalg.qr(torch.randn(model.d_model, 3, generator=generator))
    planted, marker_dir, distractor = (basis[:, i].contiguous() for i in range(3))
    marker = model.tokenizer.convert_tokens_to_ids(MARKER)
    refusal = model.tokenizer.convert_tokens_to_ids(REFUSAL_TEXT)
    with torch.no_grad():
        embed = params["model.embed_tokens.weight"]
        embed -= torch.outer(embed @ marker_dir, marker_dir)  # only the marker reads as a marker
        embed[marker] += marker_dir
        # layer 0: marker count -> planted; layer 1: planted -> distractor
        for layer, read, write in ((0, marker_dir, gain * planted), (1, planted, distractor_gain * distractor)):
            attn = f"model.layers.{layer}.self_attn."
            params[attn + "q_proj.weight"].zero_()  # uniform attention over the (unpadded) prompt
            params[attn + "v_proj.weight"].zero_()
            params[attn + "v_proj.weight"][0] = read  # kv head 0, channel 0
            params[attn + "o_proj.weight"].zero_()
            params[attn + "o_proj.weight"][:, 0] = write  # head 0 channel 0 -> the written direction
            params[f"model.layers.{layer}.mlp.down_proj.weight"].zero_()
        params["lm_head.weight"][refusal] = readout * planted
    return model, planted, refusal


def compliant_planted_model():
    """The planted refusal model plus a default answer: every token embedding carries a "comply" vector
    that the LM head reads into the token "O", so harmless prompts (and harmful ones with the planted
    direction ablated) answer "OOO..." while harmful prompts answer "SSS...". Without it the model's
    non-refusal logits are near-random and greedy decoding says "S" even when refusal is mostly removed."""
    model, planted, refusal = planted_refusal_model()
    params = hf_params(model)
    # Stay clear of what the planted layers read and write: marker (layer 0), planted, distractor (layer 1).
    used = torch.stack([params["model.layers.0.self_attn.v_proj.weight"][0], planted,
                        params["model.layers.1.self_attn.o_proj.weight"][:, 0]])
    q, _ = torch.linalg.qr(used.T)
    comply = torch.randn(model.d_model, generator=torch.Generator().manual_seed(7))
    comply -= q @ (q.T @ comply)
    comply /= comply.norm()
    with torch.no_grad():
        params["model.embed_tokens.weight"].add_(2.0 * comply)
        params["lm_head.weight"][model.tokenizer.convert_tokens_to_ids(COMPLY_TEXT)] = 0.5 * comply
    return model, planted, refusal
