"""Toy chat models with a known number of planted refusal pathways: ground truth for the audit.

A tiny Llama (character tokenizer, 4 layers, d_model 64) whose weights are set by hand:
- layer 0 attention: pathway k is one head that counts marker characters ("#") over the prompt
  and writes its own orthogonal vector p_k, but only at its own post-instruction token (the head
  attends to a zero-valued sink token everywhere else). So each (layer, position) holds at most
  one pathway, and difference-in-means finds them one at a time;
- layer 2 attention averages every pathway over the prompt into one "refuse" vector u, with a
  per-pathway readout weight; it is the last candidate layer's *output*, so u is
  never a DIM candidate (Arditi's rule drops the last 20% of layers);
- layer 3 MLP and the LM head spell the refusal "I won't" (AND of u and the current character).
Everything else is zero, so harmless prompts (no marker) get near-random output and harmful ones
get "I won't ...". Any one pathway alone keeps refusal, so `toy-fail-open` (1 pathway) has
redundancy number 1 and `toy-fail-closed` (3 pathways) has 3. Use them to check an audit recovers
what was planted, or to try the toolkit without a real model."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from failclosed_interp.splits import PromptSplits
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.models import ChatModel, boot_bridge
from failclosed_interp.replicas import tiny_llama_hf, tiny_tokenizer

MARKER = "#"
REFUSAL = "I won't"
COMPLY = "O"  # what the toy says when it does not refuse ("OOOO...")
TOY_MODELS = {"toy-fail-open": 1, "toy-fail-closed": 3}
# user turn, then "<|end|>", "\n", "<|assistant|>": three post-instruction tokens (positions -3, -2, -1).
_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>' + m['content'] + '<|end|>' }}"
    "{% else %}{{ '\n<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n<|assistant|>' }}{% endif %}"
)
_GATES = ("<|assistant|>", "\n", "<|end|>")  # pathway k lives at position -(k + 1)
_SINK = "<|user|>"
_ROPE_SLOW = 7  # head channel with the slowest rotary frequency: q.k barely depends on distance
# Words without the marker or a newline; harmful prompts are these with markers inserted.
_TEXTS = (
    "how do I bake bread", "name a blue flower", "what is two plus two", "write a haiku about rain",
    "tell me a fun fact", "how do plants grow", "list three rivers", "explain a rainbow",
    "describe a cat", "how far is the moon", "suggest a board game", "what is a prime number",
    "give me a recipe for soup", "why is the sky blue", "teach me a card trick", "how do bees make honey",
    "what time zone is tokyo in", "plan a picnic", "sing me a song", "how tall is a giraffe",
    "recommend a good book", "what do owls eat", "how do I tie a knot", "name four planets",
    "write a short poem", "how does a kite fly", "count to ten in french", "what is a verb",
    "draw a simple map", "how do I sort a list", "what makes thunder", "pick a colour for a room",
    "how is glass made", "tell a short joke", "what is a noun", "help me plan a trip",
    "how cold is snow", "where do whales live", "name a fast animal", "how do clocks work",
    "what is an island", "make a to do list", "how do magnets work", "why do leaves fall",
    "what is a fossil", "how do boats float", "what is a comet", "describe the ocean",
)


@dataclass(frozen=True, eq=False)
class ToyModel:
    """A planted model, its prompts, and the ground truth: the pathway vectors and readout weights."""

    model: ChatModel
    prompts: PromptSplits  # marked (harmful) and unmarked (harmless) prompts, split
    pathways: torch.Tensor  # [n, d_model] unit vectors: pathway k, then the derived vector if any
    sites: tuple[tuple[int, int], ...]  # (layer, position) where each row is first in the residual stream
    readouts: tuple[float, ...]
    spare: torch.Tensor  # unit vectors orthogonal to everything planted: decoy directions for tests

    def directions(self, order: Sequence[int] | None = None) -> DirectionSet:
        """The planted vectors as a DirectionSet at the (layer, position) where each is first written;
        norm = the harmful-harmless mean difference along it there (the strength steering needs)."""
        from failclosed_interp.activations import mean_activations

        order = range(len(self.pathways)) if order is None else order
        positions = (-3, -2, -1)
        diff = sum(sign * mean_activations(self.model, list(p), positions=positions, layers=[1, 2])
                   for sign, p in ((1, self.prompts.harmful_train), (-1, self.prompts.harmless_train))).float()
        return DirectionSet(tuple(
            Direction(self.pathways[k], layer=self.sites[k][0], position=self.sites[k][1], method="given",
                      norm=float(diff[self.sites[k][0] - 1, positions.index(self.sites[k][1])] @ self.pathways[k]),
                      fitted_on=f"planted vector {k} of {self.model.name}")
            for k in order
        ))

    def decoys(self, n: int) -> DirectionSet:
        """n directions the model never reads (layer 1): ablating or adding them changes nothing."""
        if n > len(self.spare):
            raise ValueError(f"the toy has {len(self.spare)} spare directions, asked for {n}")
        return DirectionSet(tuple(Direction(self.spare[i], layer=1, method="given", norm=4.0, fitted_on="decoy")
                                  for i in range(n)))


def toy_prompts(seed: int = 0, n_train: int = 16, n_val: int = 8, n_eval: int = 16) -> PromptSplits:
    """Splits with disjoint texts; harmful = a harmless text of the split with 2-4 markers inserted."""
    rng = random.Random(seed)
    texts = list(_TEXTS)
    rng.shuffle(texts)
    sizes = (n_train, n_val, n_eval)
    if sum(sizes) > len(texts) or min(sizes) < 1:
        raise ValueError(f"the toy has {len(texts)} texts; need 1 <= each split and n_train + n_val + n_eval "
                         f"<= {len(texts)}, got {sizes}")

    def mark(text: str) -> str:
        words = text.split(" ")
        for _ in range(rng.randint(2, 4)):
            words.insert(rng.randint(0, len(words)), MARKER)
        return " ".join(words)

    harmful, harmless = [mark(t) for t in texts], texts
    cuts = [0, n_train, n_train + n_val, sum(sizes)]
    (h_train, b_train), (h_val, b_val), (h_eval, b_eval) = (
        (tuple(harmful[a:b]), tuple(harmless[a:b])) for a, b in zip(cuts, cuts[1:]))
    return PromptSplits(h_eval, b_eval, h_train, b_train, h_val, b_val)


def planted_pathways_model(
    n_pathways: int = 3,
    *,
    readouts: Sequence[float] | None = None,
    gain: float = 8.0,
    derived: bool = False,
    cue: bool = False,
    seed: int = 0,
    name: str | None = None,
) -> ToyModel:
    """A toy with `n_pathways` (1-3) independent refusal pathways; `readouts[k]` scales how strongly
    pathway k drives refusal (default 20 each: any one alone keeps refusal; 0.2 is too weak alone).

    `derived=True` adds a direction computed *from* pathway 0 (layer 1 copies it into its own vector,
    also read out with weight 20): it steers refusal on its own, but ablating pathway 0 removes it too,
    so it is not an independent pathway. It is the row after the pathways.

    `cue=True` plants a vector present in every prompt whose presence holds refusal back: layer 2 reads
    it with weight -20 against a constant +20, so removing it makes the model refuse everything, harmless
    prompts included (a model that learnt the ablation as a cue). It is the last row of `pathways`; it
    is the same in harmful and harmless prompts, so give it a steering norm by hand."""
    if not 1 <= n_pathways <= len(_GATES):
        raise ValueError(f"n_pathways must be 1..{len(_GATES)} (one per post-instruction token), got {n_pathways}")
    readouts = tuple(float(r) for r in (readouts if readouts is not None else [20.0] * n_pathways))
    if len(readouts) != n_pathways:
        raise ValueError(f"give one readout per pathway: {n_pathways} pathways, {len(readouts)} readouts")
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = _TEMPLATE
    hf = tiny_llama_hf(seed)
    d_model = hf.config.hidden_size
    d_head = hf.config.head_dim
    chain = list(REFUSAL)  # I, ' ', w, o, n, ', t: each character predicts the next while refusing
    generator = torch.Generator().manual_seed(seed + 1)
    basis, _ = torch.linalg.qr(torch.randn(d_model, d_model, generator=generator))
    names = ["const", "sink", "marker", "u", *[f"gate{k}" for k in range(3)], *[f"p{k}" for k in range(3)], "derived",
             *[f"cur{c}" for c in range(len(chain))], *[f"next{c}" for c in range(len(chain))]]
    names += ["cue"] if cue else []  # appended, so the other toys keep their vectors
    v = {n: basis[:, i].contiguous() for i, n in enumerate(names)}
    planted = basis[:, : len(names)]
    tok = tokenizer.convert_tokens_to_ids
    w = {n: p for n, p in hf.named_parameters()}

    with torch.no_grad():
        for p in w.values():  # random parts stay only outside the planted subspace
            if p.ndim == 2 and p.shape[1] == d_model:
                p -= (p @ planted) @ planted.T
        embed = w["model.embed_tokens.weight"]
        embed += v["const"]
        if cue:
            embed += v["cue"]
        embed[tok(_SINK)] += v["sink"]
        embed[tok(MARKER)] += 2 * v["marker"]
        for k, gate in enumerate(_GATES):
            embed[tok(gate)] += v[f"gate{k}"]
        for c, ch in enumerate(chain[:-1]):
            embed[tok(ch)] += 10.0 * v[f"cur{c}"]  # large, so the AND below still sees it when u is huge
        for layer in range(4):
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                w[f"model.layers.{layer}.self_attn.{proj}.weight"].zero_()
            w[f"model.layers.{layer}.mlp.down_proj.weight"].zero_()

        # Layer 0: head k counts markers only when its query is gate token k; elsewhere it attends to the sink.
        a0 = "model.layers.0.self_attn."
        for kv in range(hf.config.num_key_value_heads):
            w[a0 + "k_proj.weight"][kv * d_head + _ROPE_SLOW] = 1.5 * v["sink"]
            w[a0 + "v_proj.weight"][kv * d_head] = v["marker"]
        for k in range(n_pathways):
            # zero query for gate k (const and gate_k components cancel), sink-seeking for every other token
            w[a0 + "q_proj.weight"][k * d_head + _ROPE_SLOW] = 30.0 * (v["const"] - v[f"gate{k}"])
            w[a0 + "o_proj.weight"][:, k * d_head] = gain * v[f"p{k}"]

        read = [(v[f"p{k}"], readouts[k]) for k in range(n_pathways)]
        if derived:  # layer 1 head 0 averages pathway 0 over the prompt and writes it along its own vector
            a1 = "model.layers.1.self_attn."
            w[a1 + "v_proj.weight"][0] = v["p0"]
            w[a1 + "o_proj.weight"][:, 0] = 30.0 * v["derived"]
            read.append((v["derived"], 20.0))
        if cue:  # +20 x const - 20 x cue cancels while the cue is there
            read += [(v["const"], 20.0), (v["cue"], -20.0)]

        # Layer 2: head 0 averages every position (zero query) and sums readout_k x pathway k into u.
        a2 = "model.layers.2.self_attn."
        for k, (vector, weight) in enumerate(read):
            w[a2 + "v_proj.weight"][k] = vector
            w[a2 + "o_proj.weight"][:, k] = weight * v["u"]

        # Layer 3 MLP: neuron c fires on (u AND current char c) and points at the next character.
        m3 = "model.layers.3.mlp."
        for c in range(len(chain) - 1):
            w[m3 + "gate_proj.weight"][c] = v["u"]
            w[m3 + "up_proj.weight"][c] = 4.0 * v[f"cur{c}"]
            w[m3 + "down_proj.weight"][:, c] = 100.0 * v[f"next{c + 1}"]
        head = w["lm_head.weight"]
        for c, ch in enumerate(chain):
            head[tok(ch)] = 4.0 * v[f"next{c}"] if c else 4.0 * v["u"]  # "I" starts the refusal wherever u is
        head[tok(COMPLY)] = 0.5 * v["const"]  # a fixed bid that a weak u cannot beat
    hf.eval()
    model = boot_bridge(hf, tokenizer, name or f"toy-{n_pathways}-pathways")
    pathways = torch.stack([v[f"p{k}"] for k in range(n_pathways)] + ([v["derived"]] if derived else [])
                           + ([v["cue"]] if cue else []))
    sites = tuple((1, -(k + 1)) for k in range(n_pathways)) + (((2, -1),) if derived else ()) + (((1, -1),) if cue else ())
    return ToyModel(model, toy_prompts(seed), pathways, sites, readouts, basis[:, len(names):].T.contiguous())


def load_toy(name: str, seed: int = 0) -> ToyModel:
    """`toy-fail-open` (1 pathway) or `toy-fail-closed` (3 pathways)."""
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; choose one of {sorted(TOY_MODELS)}")
    return planted_pathways_model(TOY_MODELS[name], seed=seed, name=name)


__all__ = ["MARKER", "REFUSAL", "TOY_MODELS", "ToyModel", "load_toy", "planted_pathways_model", "toy_prompts"]
