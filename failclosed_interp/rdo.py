"""Refusal direction optimisation (RDO, Wollschläger et al. 2025), as the fail-closed authors run it.

A unit vector is learned by gradient descent so that ablating it at every layer makes harmful prompts
get a non-refusal answer, adding it at one layer makes harmless prompts get a refusal, and ablating it
on harmless prompts changes nothing (KL to the clean model). The continuations these terms train
toward (`RDOTargets`) are generated once from a reference refusal direction (`rdo_targets.py`); the
vector itself starts at random by default, so the targets, not a starting point, say what to find."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.interventions import Intervention, hook_name, intervene
from failclosed_interp.models import ChatModel
from failclosed_interp.rdo_config import RDOConfig, ablation_of, addition_of
from failclosed_interp.rdo_targets import RDOTargets, rdo_targets
from failclosed_interp.score_log import ScoreLog, digest, model_digest
from failclosed_interp.training.data import (
    IGNORE, ReferenceLogProbs, TokenizedExamples, answer_logits, collate, example_token_ids,
)


class NoNewDirection(ValueError):
    """Every vector RDO visited lies inside the span of the directions it had to differ from."""


def optimize_direction(
    model: ChatModel,
    init: Direction,
    targets: RDOTargets,
    config: RDOConfig = RDOConfig(),
    interventions: Sequence[Intervention] = (),
    *,
    orthogonal_to: DirectionSet | None = None,
    distinct_from: DirectionSet | None = None,
    min_residual: float = 1e-5,
    independent_of: DirectionSet | None = None,
    progress: bool = True,
    log_file: str | Path | None = None,
) -> Direction:
    """An RDO direction (method "rdo") at `init`'s layer, position and steering strength (`init.norm`),
    trained toward `targets` (from `rdo_targets`). It starts from `init` or at random (`config.start`).
    The lowest-loss vector visited is returned; with `distinct_from`, the lowest-loss one whose component
    outside that span is at least `min_residual` (the authors' rule; `NoNewDirection` if none is).
    `orthogonal_to` keeps every step out of that span; `independent_of` with `config.independence_weight > 0`
    penalises representational dependence on those directions. `interventions` apply to every forward
    pass, the clean reference included. The weights are frozen meanwhile and their requires_grad flags
    restored afterwards, also after an error. `log_file`: every step's loss and gradient are kept there as
    they come (`ScoreLog`); run again with the same inputs, the logged steps are replayed from it without a
    forward pass, so a killed optimisation resumes where it stopped and ends with the same vector."""
    _check_inputs(model, init, targets)
    orthogonal_to = _nonempty(model, orthogonal_to, "orthogonal_to")
    distinct_from = _nonempty(model, distinct_from, "distinct_from")
    independent_of = _nonempty(model, independent_of, "independent_of")
    if (config.independence_weight > 0) != (independent_of is not None):
        raise ValueError(
            "the independence penalty needs both independent_of= (the directions to stay independent of) and "
            f"config.independence_weight > 0; got independence_weight={config.independence_weight} and "
            f"{'no' if independent_of is None else len(independent_of)} independent_of directions"
        )
    basis = None if orthogonal_to is None else orthogonal_to.basis().double()
    if config.start == "init":
        first = init.vector
        if orthogonal_to is not None and (outside := orthogonal_to.residual_norm(first)) < 1e-4:
            raise ValueError(f"init lies inside the span of orthogonal_to (its component outside has norm {outside:.2g}); "
                             f"start from a direction outside that span, or use start='random'")
    else:
        first = torch.randn(model.d_model, generator=torch.Generator().manual_seed(config.seed)).to(init.vector.dtype)
    generator = torch.Generator().manual_seed(config.seed)
    plan = _index_batches(len(targets), config.batch_size, config.steps, generator)
    log = ScoreLog(log_file, digest(model_digest(model), init, targets, config, list(interventions), orthogonal_to,
                                    independent_of))
    with _frozen(model.bridge), intervene(model, interventions):
        objective = _Objective(model, targets, init, config, independent_of)
        visited = _descend(_constrain(first, basis), plan, objective.step, config, basis, progress, log)
    best = _lowest_loss(visited, distinct_from, min_residual)
    vector = best.vector.to(init.vector.dtype)
    scores = {"loss": best.loss, **{f"loss_{k}": v for k, v in best.terms.items()},
              "first_loss": visited[0].loss, **{f"first_loss_{k}": v for k, v in visited[0].terms.items()},
              "best_step": float(best.step), "steps_run": float(len(visited)),
              "cosine_to_init": float(F.cosine_similarity(vector.double(), init.vector.double(), dim=0))}
    fitted_on = (f"RDO ({len(visited)} of at most {config.steps} steps, {config.start} start, lowest loss at step "
                 f"{best.step}) toward targets from the {init.method} direction at layer {init.layer}, on "
                 f"{len(targets)} harmful / harmless prompt pairs"
                 + (f", orthogonal to {len(orthogonal_to)} direction(s)" if orthogonal_to is not None else "")
                 + (f", independent of {len(independent_of)} direction(s)" if independent_of is not None else ""))
    return Direction(vector, layer=init.layer, position=init.position, site=init.site, method="rdo",
                     round=init.round, norm=init.norm, fitted_on=fitted_on, scores=scores)


@dataclass(frozen=True)
class Visited:
    """A vector at the start of an optimiser step and the loss measured on it at that step."""

    step: int
    vector: Tensor
    loss: float
    terms: dict[str, float]


StepFn = Callable[[Tensor, list[int]], tuple[float, dict[str, float]]]


def _descend(start: Tensor, plan: list[list[int]], step_fn: StepFn, config: RDOConfig, basis: Tensor | None,
             progress: bool, log: ScoreLog | None = None) -> list[Visited]:
    """Projected AdamW on the unit sphere (and outside `basis`'s span). `step_fn(v, batch)` accumulates the
    gradient of the step's loss into v.grad and returns (loss, terms). Patience as the authors: a step
    whose loss is not below the lowest so far uses up patience; out of patience, the lr is divided by 10,
    or, after `lr_reductions` reductions, the descent stops. A step `log` holds is replayed from its logged
    loss and gradient (the optimiser's arithmetic is the same, so every later vector is too)."""
    v = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.AdamW([v], lr=config.lr, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
    visited: list[Visited] = []
    lowest, waited, reductions = math.inf, 0, 0
    log = log if log is not None else ScoreLog(None, "")

    def measured(batch: list[int]) -> list:
        loss, terms = step_fn(v, batch)
        return [loss, terms, v.grad.tolist()]

    bar = tqdm(plan, desc="RDO", disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        optimizer.zero_grad(set_to_none=True)
        loss, terms, grad = log.value(f"step {step}", lambda: measured(batch))
        v.grad = torch.tensor(grad, dtype=v.dtype, device=v.device)
        visited.append(Visited(step, v.detach().clone(), loss, terms))
        bar.set_postfix(loss=f"{loss:.4f}")
        with torch.no_grad():
            # Only the tangent of the unit sphere (and of the allowed subspace) moves the direction.
            v.grad.copy_(_constrain(v.grad, basis, unit=False) - (v.grad @ v) * v)
            torch.nn.utils.clip_grad_norm_([v], config.max_grad_norm)
            optimizer.step()
            v.copy_(_constrain(v, basis))
        if loss < lowest:
            lowest, waited = loss, 0
            continue
        waited += 1
        if waited >= config.patience:
            if reductions >= config.lr_reductions:
                break
            reductions, waited = reductions + 1, 0
            for group in optimizer.param_groups:
                group["lr"] /= 10
    return visited


def _lowest_loss(visited: list[Visited], distinct_from: DirectionSet | None, min_residual: float) -> Visited:
    for candidate in sorted(visited, key=lambda s: (s.loss, s.step)):
        if distinct_from is None or distinct_from.residual_norm(candidate.vector) >= min_residual:
            return candidate
    raise NoNewDirection(f"all {len(visited)} vectors RDO visited lie within the span of the {len(distinct_from)} "
                         f"earlier direction(s) (component outside < {min_residual:g})")


def answer_cross_entropy_per_row(logits: Float[Tensor, "batch pos d_vocab"], labels: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch"]:
    """Each row's mean next-token cross-entropy over its answer tokens (labels != IGNORE)."""
    target = labels[:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE,
                                reduction="none").view(target.shape)
    keep = target != IGNORE
    return per_token.sum(1) / keep.sum(1).clamp(min=1)


def retain_kl(clean: Float[Tensor, "batch pos d_vocab"], ablated: Float[Tensor, "batch pos d_vocab"],
              labels: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch"]:
    """Per row, the sum over the positions that predict answer tokens of KL(ablated || clean) between the
    next-token distributions: the authors' `kl_div(log_softmax(clean), softmax(ablated), "batchmean")` on
    one example."""
    keep = labels[:, 1:] != IGNORE
    return _kl_rows(torch.log_softmax(clean[:, :-1][keep].float(), -1), ablated[:, :-1][keep],
                    keep.nonzero()[:, 0], len(labels))


def _kl_rows(clean_logp: Tensor, ablated_logits: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Per-row sums of per-token KL(ablated || clean); float32 (log-softmax is stable in it, and float64
    over a large vocabulary costs a visible share of a CPU step)."""
    ablated_logp = torch.log_softmax(ablated_logits.float(), -1)
    per_token = (ablated_logp.exp() * (ablated_logp - clean_logp.to(ablated_logp.device))).sum(-1)
    return torch.zeros(n_rows, dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)


class _Objective:
    """The weighted RDO loss: per-example losses (mean CE over a target's tokens; KL summed over them),
    averaged over the step's examples, computed `micro_batch_size` examples per forward pass."""

    def __init__(self, model: ChatModel, targets: RDOTargets, init: Direction, config: RDOConfig,
                 independent_of: DirectionSet | None):
        self.model, self.init, self.config = model, init, config
        self.weights = {k: w for k, w in config.weights().items() if w > 0}
        self.rows = {name: [example_token_ids(model, e, model.max_context) for e in getattr(targets, name)]
                     for name in ("ablation", "addition", "retain")}
        self.clean_logp = ReferenceLogProbs(model, self.rows["retain"])  # the clean model: no intervention
        self.layers = config.independence_layers or tuple(range(model.n_layers))
        if max(self.layers) >= model.n_layers:
            raise ValueError(f"independence_layers {self.layers} out of range: the model has layers 0..{model.n_layers - 1}")
        self.independent = None if independent_of is None else independent_of.matrix().to(model.device)
        if self.independent is not None:  # neither depends on the optimised direction: compute them once
            with torch.no_grad():
                every = range(len(self.rows["ablation"]))
                self.clean = self._prompt_end_states(every, [])
                self.ablated = [self._prompt_end_states(every, [ablation_of(d, config)]) for d in self.independent]

    def _batch(self, name: str, idx: Sequence[int]) -> TokenizedExamples:
        return collate(self.model, [self.rows[name][i] for i in idx])

    def _prompt_end_states(self, idx: Sequence[int], interventions: Sequence[Intervention]) -> Tensor:
        """resid_pre at each prompt's last token, [batch, layer, d_model], for the ablation rows."""
        idx, out = list(idx), []
        for start in range(0, len(idx), self.config.micro_batch_size):
            chunk = idx[start: start + self.config.micro_batch_size]
            with intervene(self.model, interventions), _prompt_end_activations(self.model, self.layers, self._ends(chunk)) as acts:
                answer_logits(self.model, self._batch("ablation", chunk))
            out.append(acts())
        return torch.cat(out)

    def _ends(self, idx: Sequence[int]) -> list[int]:
        return [len(self.rows["ablation"][i][0]) - 1 for i in idx]

    def terms(self, v: Float[Tensor, "d_model"], idx: list[int]) -> dict[str, Tensor]:
        """Unweighted loss terms (those with weight > 0), each the SUM over these examples."""
        model, w, terms = self.model, self.weights, {}
        ablation = ablation_of(v[None], self.config)
        if "ablation" in w or "independence" in w:
            batch = self._batch("ablation", idx)
            layers = self.layers if "independence" in w else ()
            with intervene(model, [ablation]), _prompt_end_activations(model, layers, self._ends(idx)) as acts:
                logits, labels = answer_logits(self.model, batch)
            if "ablation" in w:
                terms["ablation"] = answer_cross_entropy_per_row(logits, labels).sum()
            if "independence" in w:
                terms["independence"] = self._independence(v, acts(), idx) * len(idx)
        if "addition" in w:
            with intervene(model, [addition_of(v, self.init)]):
                logits, labels = answer_logits(self.model, self._batch("addition", idx))
            terms["addition"] = answer_cross_entropy_per_row(logits, labels).sum()
        if "retain" in w:
            clean = self.clean_logp(idx)
            with intervene(model, [ablation]):
                logits, labels = answer_logits(self.model, self._batch("retain", idx))
            keep = labels[:, 1:] != IGNORE
            terms["retain"] = _kl_rows(clean, logits[:, :-1][keep], keep.nonzero()[:, 0], len(idx)).sum()
        return terms

    def step(self, v: Tensor, idx: list[int]) -> tuple[float, dict[str, float]]:
        """Accumulate into v.grad the gradient of the step's loss (mean over `idx`); return it and its terms."""
        sums: dict[str, float] = {}
        size = self.config.micro_batch_size
        for start in range(0, len(idx), size):
            terms = self.terms(v, idx[start: start + size])
            total = sum(self.weights[k] * t for k, t in terms.items()) / len(idx)
            if not math.isfinite(float(total.detach())):
                values = {k: float(t.detach()) for k, t in terms.items()}
                raise ValueError(f"the RDO loss is {float(total.detach())} (terms {values}); lower lr (now {self.config.lr}) "
                                 f"or check the model's dtype and weights (bf16/fp16 can overflow: try float32)")
            total.backward()
            for k, t in terms.items():
                sums[k] = sums.get(k, 0.0) + float(t.detach()) / len(idx)
        return sum(self.weights[k] * s for k, s in sums.items()), sums

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
    """`steps` batches of min(size, n) indices from back-to-back shuffles of range(n) (epochs)."""
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


def _check_inputs(model: ChatModel, init: Direction, targets: RDOTargets) -> None:
    if not isinstance(init, Direction):
        raise TypeError(f"init must be a Direction (e.g. find_direction(...).direction), got {type(init).__name__}")
    if not isinstance(targets, RDOTargets):
        raise TypeError(f"targets must be RDOTargets (make them with rdo_targets()), got {type(targets).__name__}")
    if init.d_model != model.d_model:
        raise ValueError(f"init has d_model={init.d_model} but the model {model.name!r} has d_model={model.d_model}; "
                         f"it was computed on another model")
    if init.layer >= model.n_layers:
        raise ValueError(f"init is at layer {init.layer} but the model has layers 0..{model.n_layers - 1}")


def _nonempty(model: ChatModel, dirset: DirectionSet | None, what: str) -> DirectionSet | None:
    """None for no set or an empty one (e.g. the first direction of the progressive loop); checks the width."""
    if dirset is not None and not isinstance(dirset, DirectionSet):
        raise TypeError(f"{what} must be a DirectionSet, got {type(dirset).__name__}")
    if dirset is None or not len(dirset):
        return None
    if dirset.d_model != model.d_model:
        raise ValueError(f"{what} has d_model={dirset.d_model} but the model {model.name!r} has d_model={model.d_model}; "
                         f"those directions were computed on another model")
    return dirset


__all__ = ["RDOConfig", "RDOTargets", "NoNewDirection", "optimize_direction", "rdo_targets", "retain_kl"]
