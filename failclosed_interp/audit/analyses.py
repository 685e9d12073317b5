"""The audit's analyses of a direction set: ablation (each alone, each pair, all but one, jointly in found
and worst order), its KL on harmless prompts, steering (own layer; common layer and strength, with the
logit induce score), representational independence, and the count of independent pathways.
Refusal figures come from memoised meters (meter.py), so analyses share measurements."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from failclosed_interp.activations import forward_without_logits
from failclosed_interp.audit.meter import AblationRefusal, RefusalMeter
from failclosed_interp.audit.redundancy import greedy_order
from failclosed_interp.chat import batches, tokenize_prompts
from failclosed_interp.dim import DirectionConfig
from failclosed_interp.directions import DirectionSet
from failclosed_interp.interventions import Ablation, Addition, Intervention, hook_name, intervene
from failclosed_interp.models import ChatModel
from failclosed_interp.scoring import kl_from_logits, last_token_logits, refusal_scores
from failclosed_interp.stats import RateEstimate


def single_ablation(refusal: AblationRefusal) -> list[RateEstimate]:
    """Harmful refusal with each direction ablated alone."""
    return [refusal([i]) for i in range(len(refusal.directions))]


def pairwise_ablation(refusal: AblationRefusal) -> list[list[RateEstimate]]:
    """`[i][j]` = harmful refusal with directions i and j ablated together; the diagonal is i alone."""
    k = len(refusal.directions)
    return [[refusal({i, j}) for j in range(k)] for i in range(k)]


def leave_one_out(refusal: AblationRefusal) -> list[RateEstimate]:
    """[i] = refusal with every direction but i ablated: the context where i is the last one left."""
    k = len(refusal.directions)
    return [refusal(set(range(k)) - {i}) for i in range(k)]


@dataclass(frozen=True)
class JointCurves:
    """Harmful refusal with the first m directions ablated, m = 0..k: in the order found (or given), and
    in the worst order (greedy: each step ablates the direction that lowers refusal most)."""

    found: tuple[RateEstimate, ...]
    worst: tuple[RateEstimate, ...]
    worst_order: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"found_order": list(range(len(self.found) - 1)), "found": [r.to_dict() for r in self.found],
                "worst_order": list(self.worst_order), "worst": [r.to_dict() for r in self.worst]}


def joint_curves(refusal: AblationRefusal) -> JointCurves:
    """Harmful refusal as more directions are ablated together: in the given order and in the greedy (most damaging first) order."""
    k = len(refusal.directions)
    order = greedy_order(lambda subset: refusal.value(subset), k)
    return JointCurves(tuple(refusal(range(m)) for m in range(k + 1)),
                       tuple(refusal(order[:m]) for m in range(k + 1)), tuple(order))


def steering_sweep(
    harmless: RefusalMeter, directions: DirectionSet, coeffs: Sequence[float]
) -> list[list[RateEstimate]]:
    """`[i][c]` = refusal on harmless prompts with `coeffs[c]` x direction i (at its recorded norm, i.e. the
    DIM strength) added at its own layer, at every position. Does the direction alone induce refusal?"""
    return [[harmless.rate(("steer", i, float(c)), [Addition(d.raw, layer=d.layer, coeff=float(c))]) for c in coeffs]
            for i, d in enumerate(directions)]


def common_site(directions: DirectionSet) -> int:
    """The direction whose layer and norm the paper's steering test uses for every direction: the first
    one of the earliest round (round 0, the one the loop started from)."""
    return min(range(len(directions)), key=lambda i: (directions[i].round, i))


def common_additions(directions: DirectionSet) -> list[Addition]:
    """Each direction (unit vector) x the common norm, added at the common layer."""
    common = directions[common_site(directions)]
    return [Addition(d.vector * common.norm, layer=common.layer) for d in directions]


def common_steering(harmless: RefusalMeter, directions: DirectionSet) -> list[RateEstimate]:
    """Harmless refusal with each direction added at the common layer and strength (the paper's test:
    does every found direction induce refusal from the same place?)."""
    return [harmless.rate(("steer-common", i), [addition]) for i, addition in enumerate(common_additions(directions))]


def induce_scores(
    model: ChatModel, instructions: Sequence[str], refusal_tokens: Sequence[int], additions: Sequence[Addition], *,
    batch_size: int = 16,
) -> tuple[float, list[float]]:
    """Mean logit refusal score (log-odds of the refusal tokens) on harmless prompts: with nothing added,
    and with each addition."""
    mean = lambda interventions: float(refusal_scores(model, instructions, refusal_tokens, interventions,  # noqa: E731
                                                      batch_size=batch_size).mean())
    return mean([]), [mean([a]) for a in additions]


def ablation_kl(
    model: ChatModel, instructions: Sequence[str], ablations: Sequence[Ablation], *, batch_size: int = 16,
) -> list[float]:
    """Mean KL(clean || ablated) of next-token distributions at the last prompt position, per ablation:
    how much it disturbs the model on these (harmless) prompts; the attacker's cost."""
    clean = last_token_logits(model, instructions, batch_size=batch_size)
    return [float(kl_from_logits(clean, last_token_logits(model, instructions, [a], batch_size=batch_size)).mean())
            for a in ablations]


@dataclass(frozen=True, eq=False)
class RepIndependence:
    """Mean cosine between residual activations (block input, every layer) and each direction, on
    harmful prompts at the audit positions: `clean[layer, j]` with nothing ablated and
    `ablated[i, layer, j]` with direction i ablated (Wollschläger et al. 2025's test)."""

    clean: Float[Tensor, "n_layers n_dirs"]
    ablated: Float[Tensor, "n_dirs n_layers n_dirs"]
    positions: tuple[int, ...]
    layers: tuple[int, ...]  # where independence is judged: the layers directions are chosen from
    floor: float = 0.05  # directions barely represented anywhere are compared against this, not against ~0

    def shift(self) -> Float[Tensor, "n_layers n_dirs n_dirs"]:
        """[layer, i, j] = how much ablating i changes the cosine with j at that layer (diagonal: NaN)."""
        delta = (self.ablated - self.clean[None]).abs().permute(1, 0, 2).clone()
        delta[:, range(delta.shape[1]), range(delta.shape[1])] = float("nan")
        return delta

    def change(self) -> Float[Tensor, "n_dirs n_dirs"]:
        """[i, j] = the largest change over `layers`, relative to how strongly j is represented there (max
        of |clean cosine|, at least `floor`). 0 = ablating i leaves j's representation untouched. The last
        layers are left out like in direction selection: there every pathway has merged into the refusal
        output, so ablating any of them moves every cosine (through the activation norm)."""
        layers = list(self.layers)
        scale = self.clean[layers].abs().amax(0).clamp(min=self.floor)
        return self.shift()[layers].amax(0) / scale[None, :]

    def independent(self, tolerance: float) -> Bool[Tensor, "n_dirs n_dirs"]:
        """Pairs where ablating either one changes the other's representation by at most `tolerance`."""
        change = torch.nan_to_num(self.change(), nan=0.0)
        ok = change <= tolerance
        return ok & ok.T

    def to_dict(self, tolerance: float) -> dict:
        return {"positions": list(self.positions), "layers": list(self.layers), "floor": self.floor, "tolerance": tolerance,
                "change": _nan_to_none(self.change()), "independent": self.independent(tolerance).tolist(),
                "clean_cosine": self.clean.T.tolist(), "ablated_cosine": self.ablated.permute(0, 2, 1).tolist()}


def _nan_to_none(matrix: Tensor) -> list[list[float | None]]:
    return [[None if v != v else float(v) for v in row] for row in matrix.tolist()]


@torch.no_grad()
def mean_cosines(
    model: ChatModel, instructions: Sequence[str], directions: DirectionSet, positions: Sequence[int], *,
    interventions: Sequence[Intervention] = (), batch_size: int = 16,
) -> Float[Tensor, "n_layers n_dirs"]:
    """Mean over prompts and `positions` of cos(resid_pre, direction j) at every layer (float64)."""
    units = directions.matrix().to(model.device, torch.float64)
    sums = torch.zeros(model.n_layers, len(directions), dtype=torch.float64, device=model.device)
    index = list(positions)

    def capture(layer: int):
        def hook(x: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
            acts = x[:, index].double()
            sums[layer] += (torch.nn.functional.normalize(acts, dim=-1) @ units.T).sum((0, 1))
            return x
        return hook

    hooks = [(hook_name(layer, "resid_pre"), capture(layer)) for layer in range(model.n_layers)]
    with intervene(model, interventions), model.bridge.hooks(fwd_hooks=hooks):  # capture sees the ablated stream
        for chunk in batches(list(instructions), batch_size):
            forward_without_logits(model, tokenize_prompts(model, chunk))
    return (sums / (len(instructions) * len(index))).cpu()


def representational_independence(
    model: ChatModel, instructions: Sequence[str], directions: DirectionSet, positions: Sequence[int], *,
    layers: Sequence[int] | None = None, batch_size: int = 16,
) -> RepIndependence:
    """Cosines with every direction at every layer, clean and with each direction ablated in turn (k + 1
    forward sweeps); independence is judged on `layers` (default: all but the last 20%, as in selection)."""
    layers = tuple(layers) if layers is not None else DirectionConfig().candidate_layers(model.n_layers)
    run = lambda interventions: mean_cosines(model, instructions, directions, positions,  # noqa: E731
                                              interventions=interventions, batch_size=batch_size)
    clean = run([])
    ablated = torch.stack([run([directions[[i]].ablation()]) for i in range(len(directions))])
    return RepIndependence(clean, ablated, tuple(positions), layers)


def independent_pathways(counted: Sequence[bool], independent: Bool[Tensor, "n_dirs n_dirs"]) -> tuple[int, ...]:
    """The largest set of counted directions (shown to carry refusal, within the KL budget) that are
    pairwise representationally independent (exhaustive, largest first; ties go to the lexicographically
    first set)."""
    candidates = [i for i, ok in enumerate(counted) if ok]
    for size in range(len(candidates), 0, -1):
        for subset in itertools.combinations(candidates, size):
            if all(bool(independent[i, j]) for i, j in itertools.combinations(subset, 2)):
                return subset
    return ()
