"""Refusal direction optimisation (RDO, Wollschläger et al. 2025): refine a refusal direction by
gradient descent, starting from the DIM direction. Ablating the direction at every layer should
make harmful prompts get a non-refusal answer, adding it at its layer should make harmless prompts
get a refusal, and ablating it on harmless prompts should change nothing (KL to the clean model).
The continuations these terms are trained toward are generated once, before optimising."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from failclosed_interp.configs import config_from_dict, config_to_dict
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.interventions import Ablation, Addition, Intervention, hook_name, intervene
from failclosed_interp.models import ChatModel
from failclosed_interp.training.data import Example, TokenizedExamples, collate, example_token_ids, own_answers
from failclosed_interp.training.trainer import answer_cross_entropy, answer_kl

TERMS = ("ablation", "addition", "retain", "independence")


@dataclass(frozen=True)
class RDOConfig:
    """How RDO optimises; the loss weights default to the authors' (1, 0.2, 1) with no independence term."""

    steps: int = 64
    lr: float = 1e-2
    batch_size: int = 8  # harmful and harmless prompts per step, each
    target_tokens: int = 30  # length of the generated targets
    ablation_weight: float = 1.0
    addition_weight: float = 0.2
    retain_weight: float = 1.0
    independence_weight: float = 0.0  # > 0 needs independent_of=
    independence_layers: tuple[int, ...] | None = None  # where the cosines are compared; None: every layer
    max_grad_norm: float = 10.0
    generation_batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0 (default 1e-2), got {self.lr}")
        for name in ("batch_size", "target_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        weights = self.weights()
        bad = {k: w for k, w in weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"loss weights must be finite and >= 0, got {bad}")
        if not any(weights.values()):
            raise ValueError("every loss weight is 0, so there is nothing to optimise; the authors use "
                             "ablation_weight=1, addition_weight=0.2, retain_weight=1")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a finite number > 0, got {self.max_grad_norm}")
        if self.independence_layers is not None:
            object.__setattr__(self, "independence_layers", tuple(int(layer) for layer in self.independence_layers))
            layers = self.independence_layers
            if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
                raise ValueError(f"independence_layers must be distinct layer indices >= 0 (or None for all), got {layers}")

    def weights(self) -> dict[str, float]:
        return {term: getattr(self, f"{term}_weight") for term in TERMS}

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RDOConfig:
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class RDOTargets:
    """The continuations RDO trains toward, in prompt order."""

    ablation: tuple[Example, ...]  # harmful prompt -> its answer with the init direction ablated (a non-refusal)
    addition: tuple[Example, ...]  # harmless prompt -> its answer with the init direction added (a refusal)
    retain: tuple[Example, ...]  # harmless prompt -> its own answer, init untouched (where the KL is measured)

    def to_dict(self) -> dict:
        return {name: [e.to_dict() for e in getattr(self, name)] for name in ("ablation", "addition", "retain")}


def _addition(vector: Float[Tensor, "d_model"], init: Direction) -> Addition:
    """`vector` added at init's layer and site, scaled by init's raw (DIM) norm: the steering strength."""
    return Addition(vector, layer=init.layer, coeff=init.norm, site=init.site)


def rdo_targets(
    model: ChatModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    init: Direction,
    config: RDOConfig = RDOConfig(),
    interventions: Sequence[Intervention] = (),
    *,
    progress: bool = True,
) -> RDOTargets:
    """Generate the targets once (greedy, `config.target_tokens` tokens): harmful prompts under the init
    direction's ablation, harmless prompts under its addition and with neither; `interventions` apply to all."""
    _check_inputs(model, harmful, harmless, init)
    generation = GenerationConfig(max_new_tokens=config.target_tokens, batch_size=config.generation_batch_size, seed=config.seed)

    def answers(prompts: Sequence[str], extra: Sequence[Intervention], kind: str) -> tuple[Example, ...]:
        return tuple(own_answers(model, prompts, kind, generation, [*interventions, *extra], progress=progress))

    return RDOTargets(
        ablation=answers(harmful, [DirectionSet((init,)).ablation()], "utility"),
        addition=answers(harmless, [_addition(init.vector, init)], "safety"),
        retain=answers(harmless, [], "utility"),
    )


def optimize_direction(
    model: ChatModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    init: Direction,
    config: RDOConfig = RDOConfig(),
    interventions: Sequence[Intervention] = (),
    *,
    orthogonal_to: DirectionSet | None = None,
    independent_of: DirectionSet | None = None,
    targets: RDOTargets | None = None,
    progress: bool = True,
) -> Direction:
    """An RDO direction (method "rdo", at `init`'s layer, position and steering strength), optimised from
    `init` (usually the DIM direction). `orthogonal_to` keeps it out of that span at every step;
    `independent_of` with `config.independence_weight > 0` penalises representational dependence on
    those directions. `interventions` (e.g. earlier directions ablated) apply to every forward pass, the
    reference ones included. `targets` (from `rdo_targets`) skips generating them again. The model's weights
    are frozen meanwhile and their requires_grad flags restored afterwards, also after an error.
    `scores` holds the loss terms over all prompts, for the init and the result."""
    _check_inputs(model, harmful, harmless, init)
    orthogonal_to = _nonempty(model, orthogonal_to, "orthogonal_to")
    independent_of = _nonempty(model, independent_of, "independent_of")
    if (config.independence_weight > 0) != (independent_of is not None):
        raise ValueError(
            "the independence penalty needs both independent_of= (the directions to stay independent of) and "
            f"config.independence_weight > 0; got independence_weight={config.independence_weight} and "
            f"{'no' if independent_of is None else len(independent_of)} independent_of directions"
        )
    if orthogonal_to is not None and (outside := orthogonal_to.residual_norm(init.vector)) < 1e-4:
        raise ValueError(f"init lies inside the span of orthogonal_to (its component outside has norm {outside:.2g}); "
                         f"start from a direction outside that span")
    basis = None if orthogonal_to is None else orthogonal_to.basis().double()
    start = _constrain(init.vector, basis)
    if targets is None:
        targets = rdo_targets(model, harmful, harmless, init, config, interventions, progress=progress)
    elif (len(targets.ablation), len(targets.addition), len(targets.retain)) != (len(harmful), len(harmless), len(harmless)):
        raise ValueError(f"targets are for {len(targets.ablation)} harmful / {len(targets.addition)} harmless prompts but "
                         f"{len(harmful)} / {len(harmless)} were given; make them with rdo_targets() on the same prompts")
    v = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.AdamW([v], lr=config.lr, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
    generator = torch.Generator().manual_seed(config.seed)
    plan = list(zip(_index_batches(len(harmful), config.batch_size, config.steps, generator),
                    _index_batches(len(harmless), config.batch_size, config.steps, generator)))
    with _frozen(model.bridge), intervene(model, interventions):
        objective = _Objective(model, targets, init, config, independent_of)
        initial = objective.evaluate(v)
        bar = tqdm(plan, desc="RDO", disable=not progress, leave=False)
        for step, (h_idx, s_idx) in enumerate(bar):
            optimizer.zero_grad(set_to_none=True)
            total = objective.total(objective.terms(v, h_idx, s_idx), step)
            total.backward()
            bar.set_postfix(loss=f"{float(total.detach()):.4f}")
            with torch.no_grad():
                # Only the tangent of the unit sphere (and of the allowed subspace) moves the direction.
                v.grad.copy_(_constrain(v.grad, basis, unit=False) - (v.grad @ v) * v)
                torch.nn.utils.clip_grad_norm_([v], config.max_grad_norm)
                optimizer.step()
                v.copy_(_constrain(v, basis))
        final = objective.evaluate(v)
    scores = {**_named(final, "loss"), **_named(initial, "init_loss"),
              "cosine_to_init": float(F.cosine_similarity(v.detach().double(), init.vector.double(), dim=0))}
    fitted_on = (f"RDO ({config.steps} steps) from the {init.method} direction at layer {init.layer} on "
                 f"{len(harmful)} harmful / {len(harmless)} harmless prompts"
                 + (f", orthogonal to {len(orthogonal_to)} direction(s)" if orthogonal_to is not None else "")
                 + (f", independent of {len(independent_of)} direction(s)" if independent_of is not None else ""))
    return Direction(v.detach().clone(), layer=init.layer, position=init.position, site=init.site, method="rdo",
                     round=init.round, norm=init.norm, fitted_on=fitted_on, scores=scores)


class _Objective:
    """The weighted RDO loss on index batches of the harmful and harmless prompts."""

    def __init__(self, model: ChatModel, targets: RDOTargets, init: Direction, config: RDOConfig,
                 independent_of: DirectionSet | None):
        self.model, self.init, self.config = model, init, config
        self.weights = {k: w for k, w in config.weights().items() if w > 0}
        rows = {name: [example_token_ids(model, e, model.max_context) for e in getattr(targets, name)]
                for name in ("ablation", "addition", "retain")}
        self.rows = rows
        self.layers = config.independence_layers or tuple(range(model.n_layers))
        if max(self.layers) >= model.n_layers:
            raise ValueError(f"independence_layers {self.layers} out of range: the model has layers 0..{model.n_layers - 1}")
        self.independent = None if independent_of is None else independent_of.matrix().to(model.device)
        if self.independent is not None:  # neither depends on the optimised direction: compute them once
            with torch.no_grad():
                self.clean = self._prompt_end_states(range(len(rows["ablation"])), [])
                self.ablated = [self._prompt_end_states(range(len(rows["ablation"])), [Ablation(d)]) for d in self.independent]

    def _batch(self, name: str, idx: Sequence[int]) -> TokenizedExamples:
        return collate(self.model, [self.rows[name][i] for i in idx])

    def _logits(self, batch: TokenizedExamples) -> Float[Tensor, "batch pos d_vocab"]:
        return self.model.bridge(batch.input_ids, attention_mask=batch.attention_mask)

    def _prompt_end_states(self, idx: Sequence[int], interventions: Sequence[Intervention]) -> Tensor:
        """resid_pre at each prompt's last token, [batch, layer, d_model], for the ablation rows."""
        idx = list(idx)
        out = []
        for start in range(0, len(idx), self.config.batch_size):
            chunk = idx[start: start + self.config.batch_size]
            batch = self._batch("ablation", chunk)
            with intervene(self.model, interventions), _prompt_end_activations(self.model, self.layers, self._ends(chunk)) as acts:
                self._logits(batch)
            out.append(acts())
        return torch.cat(out)

    def _ends(self, idx: Sequence[int]) -> list[int]:
        return [len(self.rows["ablation"][i][0]) - 1 for i in idx]

    def terms(self, v: Float[Tensor, "d_model"], harmful_idx: Sequence[int], harmless_idx: Sequence[int]) -> dict[str, Tensor]:
        """Unweighted loss terms (those with weight > 0) on these prompts; a term whose prompts are empty is left out."""
        model, w, terms = self.model, self.weights, {}
        ablation = Ablation(v[None])
        if harmful_idx and ("ablation" in w or "independence" in w):
            batch = self._batch("ablation", harmful_idx)
            layers = self.layers if "independence" in w else ()
            with intervene(model, [ablation]), _prompt_end_activations(model, layers, self._ends(harmful_idx)) as acts:
                logits = self._logits(batch)
            if "ablation" in w:
                terms["ablation"] = answer_cross_entropy(logits, batch.labels)
            if "independence" in w:
                terms["independence"] = self._independence(v, acts(), list(harmful_idx))
        if harmless_idx and "addition" in w:
            batch = self._batch("addition", harmless_idx)
            with intervene(model, [_addition(v, self.init)]):
                terms["addition"] = answer_cross_entropy(self._logits(batch), batch.labels)
        if harmless_idx and "retain" in w:
            batch = self._batch("retain", harmless_idx)
            with torch.no_grad():
                reference = self._logits(batch)
            with intervene(model, [ablation]):
                terms["retain"] = answer_kl(reference, self._logits(batch), batch.labels)
        return terms

    def _independence(self, v: Tensor, states: Tensor, idx: list[int]) -> Tensor:
        """Sum over independent directions d of the mean squared change, over layers and prompts, of
        cos(activation, d) when v is ablated, plus that of cos(activation, v) when d is ablated."""
        clean = self.clean[idx].float()
        v = v.to(clean.device)
        loss = clean.new_zeros(())
        for d, ablated in zip(self.independent, self.ablated):
            d = d.to(clean.device)
            loss = loss + (_cos(states.float(), d) - _cos(clean, d)).square().mean()
            loss = loss + (_cos(ablated[idx].float(), v) - _cos(clean, v)).square().mean()
        return loss

    def total(self, terms: dict[str, Tensor], step: int | None = None) -> Tensor:
        total = sum(self.weights[k] * t for k, t in terms.items())
        if not math.isfinite(float(total.detach())):
            where = "when evaluating the direction" if step is None else f"at step {step}"
            values = {k: float(t) for k, t in terms.items()}
            raise ValueError(f"the RDO loss is {float(total)} {where} (terms {values}); lower lr (now {self.config.lr}) "
                             f"or check the model's dtype and weights (bf16/fp16 can overflow: try float32)")
        return total

    @torch.no_grad()
    def evaluate(self, v: Tensor) -> dict[str, float]:
        """Each weighted term over all prompts (mean over batches, weighted by their size) and their sum."""
        sums: dict[str, float] = {}
        size = self.config.batch_size
        for n, side in ((len(self.rows["ablation"]), 0), (len(self.rows["addition"]), 1)):
            for start in range(0, n, size):
                chunk = list(range(start, min(start + size, n)))
                terms = self.terms(v, *((chunk, []) if side == 0 else ([], chunk)))
                self.total(terms)
                for k, t in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(t) * len(chunk) / n
        weighted = {k: self.weights[k] * s for k, s in sums.items()}
        return {"": sum(weighted.values()), **{f"_{k}": s for k, s in sums.items()}}


def _named(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {prefix + k: v for k, v in values.items()}


def _cos(x: Float[Tensor, "batch n_layers d_model"], d: Float[Tensor, "d_model"]) -> Float[Tensor, "batch n_layers"]:
    return F.cosine_similarity(x, d.to(x.dtype).expand_as(x), dim=-1)


@contextmanager
def _prompt_end_activations(model: ChatModel, layers: Sequence[int], ends: list[int]):
    """Yields a function returning resid_pre at positions `ends` of each row, [batch, layer, d_model], with
    gradients. Registered after any active intervention, so it sees the intervened activation."""
    store: dict[int, Tensor] = {}
    rows, cols = torch.arange(len(ends)), torch.tensor(ends)

    def capture(i: int):
        def hook(x: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
            store[i] = x[rows.to(x.device), cols.to(x.device)]
            return x

        return hook

    with model.bridge.hooks(fwd_hooks=[(hook_name(layer, "resid_pre"), capture(i)) for i, layer in enumerate(layers)]):
        yield lambda: torch.stack([store[i] for i in range(len(layers))], dim=1)


def _constrain(v: Float[Tensor, "d_model"], basis: Tensor | None, *, unit: bool = True) -> Float[Tensor, "d_model"]:
    """v with the span of `basis` projected out (float64 inside), rescaled to unit norm when `unit`."""
    out = v.detach().double()
    if basis is not None:
        q = basis.to(out.device)
        out = out - (q @ out) @ q
    if unit:
        out = out / out.norm()
    return out.to(v.dtype)


def _index_batches(n: int, size: int, steps: int, generator: torch.Generator) -> list[list[int]]:
    """`steps` batches of min(size, n) indices from back-to-back shuffles of range(n)."""
    size = min(size, n)
    stream: list[int] = []
    while len(stream) < steps * size:
        stream += torch.randperm(n, generator=generator).tolist()
    return [stream[i * size: (i + 1) * size] for i in range(steps)]


@contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    """No parameter requires grad and every submodule is in eval mode inside; both restored on exit."""
    grads = [(p, p.requires_grad) for p in module.parameters()]
    modes = [(m, m.training) for m in module.modules()]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        module.eval()
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _check_inputs(model: ChatModel, harmful: Sequence[str], harmless: Sequence[str], init: Direction) -> None:
    if not harmful or not harmless:
        raise ValueError(f"RDO needs nonempty harmful and harmless prompt sets, got {len(harmful)} harmful and "
                         f"{len(harmless)} harmless prompts")
    if not isinstance(init, Direction):
        raise TypeError(f"init must be a Direction (e.g. find_direction(...).direction), got {type(init).__name__}")
    if init.d_model != model.d_model:
        raise ValueError(f"init has d_model={init.d_model} but the model {model.name!r} has d_model={model.d_model}; "
                         f"it was computed on another model")
    if init.layer >= model.n_layers:
        raise ValueError(f"init is at layer {init.layer} but the model has layers 0..{model.n_layers - 1}")


def _nonempty(model: ChatModel, dirset: DirectionSet | None, what: str) -> DirectionSet | None:
    """None for no set or an empty one (e.g. round 1 of the progressive loop); checks the width."""
    if dirset is not None and not isinstance(dirset, DirectionSet):
        raise TypeError(f"{what} must be a DirectionSet, got {type(dirset).__name__}")
    if dirset is None or not len(dirset):
        return None
    if dirset.d_model != model.d_model:
        raise ValueError(f"{what} has d_model={dirset.d_model} but the model {model.name!r} has d_model={model.d_model}; "
                         f"those directions were computed on another model")
    return dirset
