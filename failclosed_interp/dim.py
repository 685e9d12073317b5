"""Difference-in-means (DIM) refusal directions with Arditi et al.'s selection: one candidate per
(layer, post-instruction position); keep those whose ablation barely moves harmless outputs (KL)
and whose addition induces refusal; choose the one whose ablation lowers harmful refusal most."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from failclosed_interp.activations import check_layer_choice, check_positions, mean_activations
from failclosed_interp.artifacts import write_json
from failclosed_interp.chat import post_instruction_positions
from failclosed_interp.configs import JsonConfig
from failclosed_interp.directions import Direction, DirectionSet, save_directions
from failclosed_interp.interventions import Ablation, Addition, Intervention
from failclosed_interp.models import ChatModel
from failclosed_interp.score_log import ScoreLog, digest, model_digest
from failclosed_interp.scoring import kl_from_logits, last_token_logits, refusal_score_from_logits


def _check_thresholds(owner: str, kl_threshold: float, induce_threshold: float | None) -> None:
    if not (math.isfinite(kl_threshold) and kl_threshold >= 0):
        raise ValueError(f"{owner}.kl_threshold must be a finite number >= 0 (default 0.1), got {kl_threshold}")
    if induce_threshold is not None and not math.isfinite(induce_threshold):
        raise ValueError(f"{owner}.induce_threshold must be finite, or None to switch the rule off (default 0.0), "
                         f"got {induce_threshold}")


def _accepts(rules: DirectionConfig | FallbackRules, kl: float, induce: float) -> bool:
    """The KL (specificity) and induce (sufficiency) rules; NaN (not evaluated) never passes."""
    return kl <= rules.kl_threshold and (rules.induce_threshold is None or induce > rules.induce_threshold)


def _rules_text(rules: DirectionConfig | FallbackRules) -> str:
    """E.g. "main rules (KL <= 0.1, induce score > 0.0)" or "fallback rules (KL <= 0.3, induce rule off)"."""
    induce = "induce rule off" if rules.induce_threshold is None else f"induce score > {rules.induce_threshold}"
    kind = "fallback" if isinstance(rules, FallbackRules) else "main"
    return f"{kind} rules (KL <= {rules.kl_threshold}, {induce})"


@dataclass(frozen=True)
class FallbackRules:
    """Looser KL / induce thresholds, used only when no candidate passes the main ones. The selection
    then records that it used them and why the main rules failed (`Selection.main_rules_failure`)."""

    kl_threshold: float
    induce_threshold: float | None = None

    def __post_init__(self):
        _check_thresholds("FallbackRules", self.kl_threshold, self.induce_threshold)


def fallback_rules(kl_threshold: float | None, induce_threshold: float | None = None) -> FallbackRules | None:
    """`FallbackRules` from optional thresholds; None (no fallback) when neither is given."""
    if kl_threshold is None:
        if induce_threshold is not None:
            raise ValueError("FallbackRules.induce_threshold was given without FallbackRules.kl_threshold; a fallback "
                             "needs its KL rule: give kl_threshold too, or neither")
        return None
    return FallbackRules(kl_threshold, induce_threshold)


@dataclass(frozen=True)
class DirectionConfig(JsonConfig):
    """How DIM candidates are made and selected (defaults follow Arditi et al. 2024)."""

    positions: tuple[int, ...] | None = None  # None: the chat template's post-instruction tokens
    exclude_last_fraction: float = 0.2
    kl_threshold: float = 0.1
    induce_threshold: float | None = 0.0  # None: the sufficiency (induce) rule is off
    batch_size: int = 16
    lazy: bool = False  # score KL/induce only in ablation-score order until one passes
    layers: tuple[int, ...] | None = None  # restrict candidate layers
    fallback: FallbackRules | None = None  # rules to choose by, reported as such, when nothing passes the main ones

    def __post_init__(self):
        if self.positions is not None:
            object.__setattr__(self, "positions", check_positions(self.positions))
        if self.layers is not None:
            object.__setattr__(self, "layers", check_layer_choice(self.layers))
        if not 0 <= self.exclude_last_fraction < 1:
            raise ValueError(f"exclude_last_fraction must be in [0, 1) (0.2 drops the last 20% of layers), got {self.exclude_last_fraction}")
        _check_thresholds("DirectionConfig", self.kl_threshold, self.induce_threshold)
        if self.fallback is not None and not isinstance(self.fallback, FallbackRules):
            raise TypeError(f"fallback must be FallbackRules or None, got {type(self.fallback).__name__}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def candidate_layers(self, n_layers: int) -> tuple[int, ...]:
        """Layers that may hold the direction: not in the last `exclude_last_fraction`, and in `layers`."""
        if self.layers is not None and max(self.layers) >= n_layers:
            raise ValueError(f"layers {self.layers} out of range: the model has layers 0..{n_layers - 1}")
        limit = int(n_layers * (1 - self.exclude_last_fraction))  # Arditi's rule: keep layer < limit
        chosen = tuple(layer for layer in (self.layers or range(n_layers)) if layer < limit)
        if not chosen:
            raise ValueError(f"no candidate layer left: layers={self.layers} but only layers < {limit} are kept; "
                             f"lower exclude_last_fraction or pick earlier layers")
        return chosen

    def accepts(self, kl: float, induce_score: float) -> bool:
        """Does a candidate with this harmless KL and induce score pass the main selection rules?"""
        return _accepts(self, kl, induce_score)


def _positions(model: ChatModel, config: DirectionConfig) -> tuple[int, ...]:
    return config.positions if config.positions is not None else tuple(post_instruction_positions(model))


def dim_candidates(
    model: ChatModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: DirectionConfig = DirectionConfig(),
    interventions: Sequence[Intervention] = (),
    *,
    progress: bool = False,
) -> Float[Tensor, "n_layers n_pos d_model"]:
    """mean(harmful) - mean(harmless) of resid_pre at every layer and position (float32, raw norm)."""
    kwargs = dict(positions=_positions(model, config), batch_size=config.batch_size, interventions=interventions, progress=progress)
    diff = mean_activations(model, harmful, **kwargs) - mean_activations(model, harmless, **kwargs)
    return diff.float()


@dataclass(frozen=True, eq=False)
class Selection:
    """Every candidate's scores ([n_layers, n_pos], NaN = not evaluated) and the chosen direction.
    Baselines are the refusal scores under the base interventions only (no candidate)."""

    direction: Direction
    layer: int
    position: int
    positions: tuple[int, ...]
    ablation_score: Float[Tensor, "n_layers n_pos"]
    induce_score: Float[Tensor, "n_layers n_pos"]
    kl: Float[Tensor, "n_layers n_pos"]
    baseline_harmful_score: float
    baseline_harmless_score: float
    config: DirectionConfig
    main_rules_failure: str | None = None  # set when the direction was chosen by config.fallback
    refusal_tokens: tuple[int, ...] = ()  # the tokens every refusal score here was computed on

    @property
    def rules_used(self) -> DirectionConfig | FallbackRules:
        """The rules the direction was chosen by: the config's main rules, or its fallback."""
        return self.config if self.main_rules_failure is None else self.config.fallback

    def rules(self) -> str:
        """Which rules chose the direction, in words, e.g. "main rules (KL <= 0.1, induce score > 0.0)"."""
        return _rules_text(self.rules_used)

    def filter_reason(self, layer: int, index: int) -> str | None:
        """Why candidate (layer, positions[index]) was not chosen; None for the chosen one."""
        cfg = self.config
        if (layer, self.positions[index]) == (self.layer, self.position):
            return None
        if layer >= int(self.ablation_score.shape[0] * (1 - cfg.exclude_last_fraction)):
            return f"in the last {cfg.exclude_last_fraction:.0%} of layers (exclude_last_fraction)"
        if cfg.layers is not None and layer not in cfg.layers:
            return "not in config.layers"
        abl, ind, kl = (float(t[layer, index]) for t in (self.ablation_score, self.induce_score, self.kl))
        if math.isnan(abl):
            return "zero difference in means (no signal at this site)"
        if math.isnan(kl):
            return "not evaluated (lazy selection stopped at the chosen one)"
        rules = self.rules_used
        if not kl <= rules.kl_threshold:
            return f"KL {kl:.4g} > kl_threshold {rules.kl_threshold}"
        if not _accepts(rules, kl, ind):
            return f"induce score {ind:.4g} <= induce_threshold {rules.induce_threshold}"
        return "passed the filters, but its ablation score is higher than the chosen one's"

    def candidates(self) -> list[dict]:
        rows = []
        for layer in range(self.ablation_score.shape[0]):
            for index, position in enumerate(self.positions):
                reason = self.filter_reason(layer, index)
                rows.append({
                    "layer": layer, "position": position,
                    **{name: _finite_or_none(float(getattr(self, name)[layer, index])) for name in ("ablation_score", "induce_score", "kl")},
                    "chosen": reason is None,
                    "filtered": reason is not None and not reason.startswith("passed"),
                    "reason": reason,
                })
        return rows

    def to_dict(self) -> dict:
        return {
            "layer": self.layer, "position": self.position, "positions": list(self.positions),
            "baseline_harmful_score": self.baseline_harmful_score, "baseline_harmless_score": self.baseline_harmless_score,
            "direction": self.direction.metadata(), "config": self.config.to_dict(),
            "rules": self.rules(),
            "main_rules_failure": self.main_rules_failure,
            "ablation_score": _grid(self.ablation_score), "induce_score": _grid(self.induce_score), "kl": _grid(self.kl),
        }


class NoDirectionPassed(ValueError):
    """No candidate passed the selection rules; carries every candidate's scores for inspection."""

    def __init__(self, message: str, positions: tuple[int, ...], scores: dict[str, Tensor]):
        super().__init__(message)
        self.positions = positions
        self.scores = scores

    def candidates(self) -> list[dict]:
        first = next(iter(self.scores.values()))
        return [
            {"layer": layer, "position": position,
             **{name: _finite_or_none(float(grid[layer, i])) for name, grid in self.scores.items()}}
            for layer in range(first.shape[0]) for i, position in enumerate(self.positions)
        ]


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def _grid(scores: Tensor) -> list[list[float | None]]:
    return [[_finite_or_none(v) for v in row] for row in scores.tolist()]


def save_selection(selection: Selection, folder: str | Path, identity: dict) -> Path:
    """`candidates.json`, `selection.json` and the chosen direction (so `load_directions(folder)` works)."""
    folder = Path(folder)
    write_json(folder / "candidates.json", selection.candidates())
    write_json(folder / "selection.json", selection.to_dict())
    save_directions(DirectionSet((selection.direction,)), folder, identity)
    return folder


def select_direction(
    model: ChatModel,
    candidates: Float[Tensor, "n_layers n_pos d_model"],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    refusal_tokens: Sequence[int],
    config: DirectionConfig = DirectionConfig(),
    interventions: Sequence[Intervention] = (),
    *,
    fitted_on: str = "",
    progress: bool = False,
    log_file: str | Path | None = None,
) -> Selection:
    """Score every eligible candidate (ablation, KL, induce) and choose one (Arditi et al.'s rules).
    `log_file`: keep every candidate's scores there as they come (`ScoreLog`), so that a killed selection
    run again on the same model, candidates, prompts and settings resumes where it stopped."""
    positions = _positions(model, config)
    if tuple(candidates.shape) != (model.n_layers, len(positions), model.d_model):
        raise ValueError(f"candidates have shape {tuple(candidates.shape)} but this model and config need "
                         f"{(model.n_layers, len(positions), model.d_model)}; compute them with dim_candidates() on this model")
    if not harmful_val or not harmless_val:
        raise ValueError("selection needs nonempty harmful_val and harmless_val prompt sets")
    base, n_harmful, bs = list(interventions), len(harmful_val), config.batch_size

    def score(logits: Tensor) -> float:
        return float(refusal_score_from_logits(logits, refusal_tokens).mean())

    clean = last_token_logits(model, [*harmful_val, *harmless_val], base, batch_size=bs)
    clean_harmless = clean[n_harmful:]
    abl, ind, kl = (torch.full(candidates.shape[:2], math.nan, dtype=torch.float64) for _ in range(3))
    # DIM is exactly zero where both sets see the same tokens with no mixing yet (e.g. layer 0).
    todo = [(layer, i) for layer in config.candidate_layers(model.n_layers) for i in range(len(positions))
            if float(candidates[layer, i].norm()) > 0]

    def ablation(c) -> Ablation:  # every layer, the authors' sites
        return Ablation(candidates[c][None])

    def passes(c) -> bool:
        return config.accepts(float(kl[c]), float(ind[c]))

    def harmless_scores(c, ablated_harmless: Tensor) -> list[float]:  # [KL, induce score]
        added = Addition(candidates[c], layer=c[0], coeff=1.0)  # raw DIM vector: its norm is the strength
        return [float(kl_from_logits(clean_harmless, ablated_harmless).mean()),
                score(last_token_logits(model, harmless_val, base + [added], batch_size=bs))]

    def all_scores(c) -> list[float]:  # ablated harmful and harmless in one batched call
        logits = last_token_logits(model, [*harmful_val, *harmless_val], base + [ablation(c)], batch_size=bs)
        return [score(logits[:n_harmful]), *harmless_scores(c, logits[n_harmful:])]

    log = ScoreLog(log_file, digest(model_digest(model), candidates, list(harmful_val), list(harmless_val),
                                    list(refusal_tokens), config, base))
    label = {c: f"layer {c[0]} position {positions[c[1]]}" for c in todo}
    bar = tqdm(todo, desc="DIM candidates", disable=not progress, leave=False)
    if not config.lazy:
        for c in bar:
            abl[c], kl[c], ind[c] = log.value(label[c], lambda: all_scores(c))
    else:
        for c in bar:
            abl[c] = log.value(f"ablation {label[c]}", lambda: score(
                last_token_logits(model, harmful_val, base + [ablation(c)], batch_size=bs)))
        ranked = sorted(todo, key=lambda c: float(abl[c]))
        for c in tqdm(ranked, desc="KL/induce filters, best first", disable=not progress, leave=False):
            kl[c], ind[c] = log.value(f"harmless {label[c]}", lambda: harmless_scores(
                c, last_token_logits(model, harmless_val, base + [ablation(c)], batch_size=bs)))
            if passes(c):
                break
    passing, main_failure = [c for c in todo if passes(c)], None
    if not passing and config.fallback is not None:  # every candidate was scored (lazy stops only on a pass)
        main_failure = _nothing_passed(todo, positions, abl, ind, kl, config)
        passing = [c for c in todo if _accepts(config.fallback, float(kl[c]), float(ind[c]))]
    if not passing:
        message = _nothing_passed(todo, positions, abl, ind, kl, config)
        if main_failure is not None:
            message += f" The {_rules_text(config.fallback)} passed none either."
        raise NoDirectionPassed(message, positions, {"ablation_score": abl, "induce_score": ind, "kl": kl})
    layer, i = min(passing, key=lambda c: float(abl[c]))
    baselines = score(clean[:n_harmful]), score(clean_harmless)
    scores = {"ablation_score": float(abl[layer, i]), "induce_score": float(ind[layer, i]), "kl": float(kl[layer, i]),
              "baseline_harmful_score": baselines[0], "baseline_harmless_score": baselines[1]}
    if main_failure is not None:  # say so wherever the direction goes (its JSON, audit tables)
        chosen_by = f"chosen by {_rules_text(config.fallback)}"
        fitted_on = f"{fitted_on}; {chosen_by}" if fitted_on else chosen_by
    direction = Direction(candidates[layer, i], layer=layer, position=positions[i], method="dim", scores=scores, fitted_on=fitted_on)
    return Selection(direction, layer, positions[i], positions, abl, ind, kl, *baselines, config, main_failure,
                     tuple(refusal_tokens))


def _nothing_passed(todo, positions, abl, ind, kl, config: DirectionConfig) -> str:
    if not todo:
        return "every candidate direction is zero (harmful and harmless activations are identical); check the prompt sets"
    evaluated = [c for c in todo if not math.isnan(float(kl[c]))]

    def where(c) -> str:
        return (f"layer {c[0]} position {positions[c[1]]} (ablation {float(abl[c]):.3g}, KL {float(kl[c]):.3g}, "
                f"induce {float(ind[c]):.3g})")

    best = min(todo, key=lambda c: float(abl[c]))
    lines = [f"best ablation score at {where(best)}"]
    if evaluated:
        lines += [f"lowest KL at {where(min(evaluated, key=lambda c: float(kl[c])))}",
                  f"highest induce score at {where(max(evaluated, key=lambda c: float(ind[c])))}"]
    return (f"no DIM candidate passed the filters (KL <= kl_threshold={config.kl_threshold} on harmless prompts and "
            f"induce score > induce_threshold={config.induce_threshold}): " + "; ".join(lines) +
            ". To get a direction, loosen kl_threshold or induce_threshold, lower exclude_last_fraction, "
            f"or use more or clearer prompts.")

