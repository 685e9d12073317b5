"""The audit: how many independent refusal pathways does a model have, and is it fail-open or fail-closed?

`run_audit` takes a model and prompts, and either a direction set (e.g. the progressive loop's
`final/directions`) or none (then it discovers directions itself), runs every analysis with shared,
memoised refusal measurements and returns an `AuditResult`; `audit_job` loads the model, runs it and
writes `audit.json` + `report.html`. Only directions shown to carry refusal, within the attacker's KL
budget, count toward the redundancy number and the pathways; the verdict rule is in `verdict.py`."""

from __future__ import annotations

from pathlib import Path

import torch

from failclosed_interp.attacks.adaptive import PREFIX_NAMES, AdaptiveAttackResult, AttackSearch, adaptive_attack, load_search
from failclosed_interp.attacks.base import MIN_JUDGED_TOKENS
from failclosed_interp.audit.analyses import (
    ablation_kl, common_additions, common_site, common_steering, independent_pathways, induce_scores, joint_curves,
    leave_one_out, pairwise_ablation, representational_independence, single_ablation, steering_sweep,
)
from failclosed_interp.audit.config import AuditConfig
from failclosed_interp.audit.discover import discover_directions
from failclosed_interp.audit.evidence import ablation_evidence, addition_evidence, carrying, rising_refusal
from failclosed_interp.audit.meter import AblationRefusal, MeasureConfig, RefusalMeter
from failclosed_interp.audit.redundancy import redundancy_over
from failclosed_interp.audit.report import write_audit
from failclosed_interp.audit.result import AuditResult
from failclosed_interp.audit.strongest import strongest_direction
from failclosed_interp.audit.verdict import verdict
from failclosed_interp.chat import post_instruction_positions
from failclosed_interp.dim import dim_candidates
from failclosed_interp.directions import DirectionSet, load_directions
from failclosed_interp.judges import DEFAULT_JUDGE, Judge, ThreeWayJudge, judge_by_name
from failclosed_interp.models import ChatModel, load_model
from failclosed_interp.score_log import PROGRESS_FILE
from failclosed_interp.scoring import refusal_tokens_from_responses, token_strings
from failclosed_interp.search import InsideSpan, check_new
from failclosed_interp.splits import PromptSplits
from failclosed_interp.stopwatch import Stopwatch
from failclosed_interp.toys import TOY_MODELS, load_toy


def load_subject(name: str, adapter: str | Path | None = None, *, device: str | None = None,
                 config: AuditConfig = AuditConfig()) -> tuple[ChatModel, PromptSplits]:
    """The model to audit and its prompts: a toy (`toy-fail-open`, `toy-fail-closed`) with its own
    marked prompts, or any `load_model` name with the built-in prompt sets."""
    sizes = dict(n_eval=config.n_eval, n_harmless=config.n_harmless, n_train=config.n_train, n_val=config.n_val)
    if name in TOY_MODELS:
        if adapter is not None:
            raise ValueError(f"the toy model {name!r} takes no adapter")
        toy = load_toy(name, seed=config.seed)
        return toy.model, toy.prompts.limited(**sizes)
    return load_model(name, adapter=adapter, device=device), PromptSplits.builtin(**sizes, seed=config.seed)


def _refusal_tokens(model: ChatModel, judged) -> list[int]:
    try:
        return refusal_tokens_from_responses(model, judged.instructions, judged.responses)
    except ValueError:
        return []


def run_audit(
    model: ChatModel,
    prompts: PromptSplits,
    config: AuditConfig = AuditConfig(),
    directions: DirectionSet | None = None,
    *,
    judge: Judge = ThreeWayJudge(),
    adaptive_search: AttackSearch | None = None,
    progress: bool = False,
    log_file: str | Path | None = None,
) -> AuditResult:
    """Audit `model`'s refusal pathways along `directions` (discovered when None). `adaptive_search`: the
    adaptive attacker's search made before on this model with `config.attacker` (searched here when None;
    `log_file`: where that search logs its scores, to resume after a kill)."""
    clock = Stopwatch(digits=2)
    if directions is not None:
        _check_directions(model, directions)
    measure, margin, budget = config.measure, config.carry_margin, config.kl_budget
    generated = RefusalMeter(model, prompts.harmful_eval, MeasureConfig("generate", measure.max_new_tokens,
                                                                        measure.batch_size, measure.seed), judge=judge,
                             progress=progress)
    generated.rate(("ablate", frozenset()))
    tokens = _refusal_tokens(model, generated.judged(("ablate", frozenset())))
    meter = lambda instructions: RefusalMeter(model, instructions, measure, judge=judge,  # noqa: E731
                                              refusal_tokens=tokens or [0], progress=progress)
    harmful = generated if measure.mode == "generate" else meter(prompts.harmful_eval)
    harmless = meter(prompts.harmless_eval)
    refusal, harmless_ablated = AblationRefusal(harmful), AblationRefusal(harmless)
    baseline, harmless_baseline = refusal([]), harmless_ablated([])
    clock.lap("baseline")
    positions = tuple(config.directions.positions or post_instruction_positions(model))
    meters = (generated, harmful, harmless)
    common = dict(model=model.name, identity=model.identity(), baseline=baseline, harmless_baseline=harmless_baseline,
                  config=config, judge=judge.name, refusal_tokens=tuple(token_strings(model, tokens)),
                  positions=positions, steering_coeffs=config.steering_coeffs,
                  outcomes={"nothing ablated": generated.outcomes(("ablate", frozenset()))})
    empty = dict(single=(), pairwise=(), joint=None, steering=(), rep=None, pathways=())
    none = redundancy_over(lambda s: 0.0, (), config.threshold)
    rule = dict(threshold=config.threshold, budget=budget, margin=margin)
    if baseline.value < config.threshold or not tokens:
        label, text = verdict(baseline, DirectionSet(), (), (), (), (), none, None, **rule)
        return AuditResult(source="given" if directions is not None else "discovered", directions=directions or DirectionSet(),
                           redundancy=none, verdict_label=label, verdict=text, n_evaluations=_evaluations(meters),
                           timings=clock.timings, **common, **empty)

    notes, discovery, source = [], None, "given"
    if directions is None:
        source = "discovered"
        discovery = discover_directions(model, refusal, prompts.harmful_train, prompts.harmless_train, prompts.harmful_val,
                                        prompts.harmless_val, tokens, k_max=config.k_max, threshold=config.threshold,
                                        config=config.directions, min_new_component=config.min_new_component,
                                        progress=progress)
        notes.append(f"discovery stopped: {discovery.stop_reason}")
        clock.lap("discover")
    else:
        refusal.directions = directions
    attack = None
    if config.adaptive:
        note, attack = _add_adaptive(model, refusal, prompts, config, judge, adaptive_search, progress, log_file)
        notes.append(note if adaptive_search is None else f"{note} (its search on this model was made before and reused)")
        source = f"{source}+adaptive"
        clock.lap("adaptive")
    dirs = harmless_ablated.directions = refusal.directions
    candidates = None
    if config.sweep or config.unbounded:
        candidates = dim_candidates(model, prompts.harmful_train, prompts.harmless_train, config.directions)
    strongest = None
    if config.unbounded:
        strongest, why = strongest_direction(model, candidates, prompts.harmful_val, prompts.harmless_val,
                                             prompts.harmless_eval, tokens, config.directions, harmful, generated, budget)
        notes += [why] if why else []
        common["outcomes"]["strongest direction ablated"] = strongest.outcomes if strongest else None
        clock.lap("strongest")
    if not len(dirs):
        label, text = verdict(baseline, dirs, (), (), (), (), none, strongest, **rule,
                              why_none=discovery.stop_reason if discovery else "")
        return AuditResult(source=source, directions=dirs, redundancy=none, verdict_label=label, verdict=text,
                           discovery=discovery, strongest=strongest, notes=tuple(notes), adaptive_attack=attack,
                           n_evaluations=_evaluations(meters), timings=clock.timings, **common, **empty)

    k = len(dirs)
    single, pairwise, others = single_ablation(refusal), pairwise_ablation(refusal), leave_one_out(refusal)
    joint = joint_curves(refusal)
    kl = ablation_kl(model, prompts.harmless_eval, [dirs[[i]].ablation() for i in range(k)], batch_size=measure.batch_size)
    clock.lap("ablation")
    steering = steering_sweep(harmless, dirs, config.steering_coeffs)
    own = [row[0] for row in steering_sweep(harmless, dirs, (1.0,))]
    at_common = common_steering(harmless, dirs)
    harmless_score, induce = induce_scores(model, prompts.harmless_eval, tokens, common_additions(dirs),
                                           batch_size=measure.batch_size)
    clock.lap("steering")
    evidence = (addition_evidence(harmless_baseline, own, at_common, margin)
                + ablation_evidence(refusal.measured(), margin))
    counted = tuple(i for i, ok in enumerate(carrying(evidence, k)) if ok and kl[i] <= budget)
    redundancy = redundancy_over(refusal.value, counted, config.threshold, max_exact=config.max_exact,
                                 known=refusal.known())
    clock.lap("redundancy")
    rep = representational_independence(model, prompts.harmful_eval, dirs, positions, batch_size=measure.batch_size,
                                        layers=config.directions.candidate_layers(model.n_layers))
    clock.lap("representational_independence")
    sweep = None
    if config.sweep:
        sweep = torch.nn.functional.cosine_similarity(candidates[None], dirs.matrix()[:, None, None, :], dim=-1)
    for i in range(k):  # does removing a direction make harmless prompts refused?
        harmless_ablated([i])
    harmless_ablated(range(k))
    rising = sorted(rising_refusal(refusal.measured(), margin, "harmful")
                    + rising_refusal(harmless_ablated.measured(), margin, "harmless"),
                    key=lambda r: r.before.value - r.after.value)
    all_ablated = AblationRefusal(generated, dirs)
    all_ablated(range(k))
    outcomes = {**common.pop("outcomes"), **{f"d{i} ablated": generated.outcomes(("ablate", frozenset({i})))
                                             for i in range(k)},
                f"all {k} ablated": generated.outcomes(("ablate", frozenset(range(k))))}
    clock.lap("flags")
    pathways = independent_pathways([i in counted for i in range(k)], rep.independent(config.ri_tolerance))
    label, text = verdict(baseline, dirs, single, kl, counted, pathways, redundancy, strongest, **rule,
                          rising=bool(rising))
    return AuditResult(
        source=source, directions=dirs, single=tuple(single), pairwise=tuple(tuple(r) for r in pairwise), joint=joint,
        steering=tuple(tuple(r) for r in steering), rep=rep, redundancy=redundancy, pathways=pathways,
        verdict_label=label, verdict=text, discovery=discovery, sweep=sweep, notes=tuple(notes),
        n_evaluations=_evaluations(meters), timings=clock.timings, kl=tuple(kl), leave_one_out=tuple(others),
        common=common_site(dirs), common_steering=tuple(at_common), harmless_score=harmless_score,
        induce_scores=tuple(induce), evidence=tuple(evidence), counted=counted, rising=tuple(rising),
        strongest=strongest, outcomes={key: value for key, value in outcomes.items() if value is not None},
        ablations=refusal.measured(), adaptive_attack=attack, **common,
    )


def _evaluations(meters) -> int:
    return sum(m.n_evaluations for m in {id(m): m for m in meters}.values())


def _check_directions(model: ChatModel, directions: DirectionSet) -> None:
    if not len(directions):
        raise ValueError("the direction set is empty; pass directions=None to let the audit discover them")
    if directions.d_model != model.d_model:
        raise ValueError(f"the directions have d_model={directions.d_model} but {model.name!r} has "
                         f"d_model={model.d_model}; they were made for another model")
    bad = [d.layer for d in directions if d.layer >= model.n_layers]
    if bad:
        raise ValueError(f"direction layers {bad} are out of range: {model.name!r} has layers 0..{model.n_layers - 1}")
    directions.basis()  # ValueError if they are linearly dependent


def _add_adaptive(model, refusal: AblationRefusal, prompts: PromptSplits, config: AuditConfig, judge: Judge,
                  search: AttackSearch | None, progress, log_file: str | Path | None) -> tuple[str, AdaptiveAttackResult]:
    """Run the independent adaptive attacker (its own prompts and search, `attacks.adaptive`) on the audit's
    harmful prompts and append the direction it chose within the audit's KL budget, unless it lies in the
    span of the audited ones."""
    attack = adaptive_attack(model, prompts.harmful_eval, config.attacker, judge,
                             max_new_tokens=max(config.measure.max_new_tokens, MIN_JUDGED_TOKENS), search=search,
                             progress=progress, log_file=log_file)
    index = attack.search.chosen_index(config.kl_budget)
    if index is None:
        why = attack.search.reason or f"no candidate within KL {config.kl_budget}"
        return f"adaptive attacker: no direction to audit ({why})", attack
    chosen = attack.search.candidates[index]
    try:
        check_new(chosen, refusal.directions, config.min_new_component, what="the adaptive attacker's direction")
    except InsideSpan as err:
        return str(err), attack
    prefix = PREFIX_NAMES[attack.search.prefix_ablated[index]]
    audited = refusal.append(chosen)
    return (f"adaptive attacker's direction within KL {config.kl_budget}: layer {chosen.layer}, position "
            f"{chosen.position} ({chosen.method}; the attacker ablated it with the template prefix {prefix}), "
            f"audited as direction {audited}"), attack


def audit_model(
    model: str,
    adapter: str | Path | None = None,
    directions: str | Path | None = None,
    *,
    config: AuditConfig = AuditConfig(),
    judge: Judge | str = DEFAULT_JUDGE,
    device: str | None = None,
    adaptive_search: str | Path | None = None,
    progress: bool = False,
    log_file: str | Path | None = None,
) -> AuditResult:
    """Load `model` (+ `adapter`) and its prompts and audit it along the directions saved in `directions`
    (discovered when None). `judge` is a Judge or a built-in one's name (see `judges.JUDGE_NAMES`).
    `adaptive_search`: a folder where the adaptive attacker's search on this same model was saved
    (`attacks.adaptive.save_search`, e.g. align's `final/adaptive`), reused instead of searching again;
    `log_file` as in `run_audit`."""
    if isinstance(judge, str):
        judge = judge_by_name(judge)
    chat_model, prompts = load_subject(model, adapter, device=device, config=config)
    given = load_directions(directions, chat_model) if directions is not None else None
    search = load_search(adaptive_search, chat_model) if adaptive_search is not None else None
    return run_audit(chat_model, prompts, config, given, judge=judge, adaptive_search=search, progress=progress,
                     log_file=log_file)


def audit_job(
    out: str | Path,
    model: str,
    *,
    adapter: str | Path | None = None,
    directions: str | Path | None = None,
    config: AuditConfig = AuditConfig(),
    judge: Judge | str = DEFAULT_JUDGE,
    device: str | None = None,
    figures: bool = False,
    adaptive_search: str | Path | None = None,
    progress: bool = True,
) -> AuditResult:
    """`audit_model`, then write `out/audit.json`, `out/report.html`, `out/directions/` (and `out/figures/`
    when `figures`). The adaptive attacker's search logs its scores in `out/adaptive/`, so that a killed
    audit run again resumes that search where it stopped."""
    result = audit_model(model, adapter, directions, config=config, judge=judge, device=device,
                         adaptive_search=adaptive_search, progress=progress,
                         log_file=Path(out) / "adaptive" / PROGRESS_FILE)
    write_audit(result, out, extra={"adapter": str(adapter) if adapter else None,
                                    "directions_from": str(directions) if directions else None}, figures=figures)
    return result
