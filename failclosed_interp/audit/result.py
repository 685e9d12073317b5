"""`AuditResult`: every figure an audit measured, what they show, and the verdict; `to_dict` is
audit.json and `format_audit` the printed table. The job builds it and the report renders it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from failclosed_interp.attacks.adaptive import AdaptiveAttackResult
from failclosed_interp.audit.analyses import JointCurves, RepIndependence
from failclosed_interp.audit.config import AuditConfig
from failclosed_interp.audit.discover import Discovery
from failclosed_interp.audit.evidence import RISING_FLAG, Evidence, Rise, carrying
from failclosed_interp.audit.redundancy import Redundancy
from failclosed_interp.audit.strongest import Strongest
from failclosed_interp.directions import DirectionSet
from failclosed_interp.stats import RateEstimate


@dataclass(frozen=True, eq=False)
class AuditResult:
    """Everything one audit measured on one model, the directions it counted and its verdict; `to_dict` is audit.json."""

    model: str
    identity: dict  # the audited model's identity (guards reloading the saved directions)
    source: str  # "given", "given+adaptive" or "discovered"
    directions: DirectionSet
    baseline: RateEstimate  # harmful refusal, nothing ablated
    harmless_baseline: RateEstimate
    single: tuple[RateEstimate, ...]
    pairwise: tuple[tuple[RateEstimate, ...], ...]
    joint: JointCurves | None
    steering_coeffs: tuple[float, ...]
    steering: tuple[tuple[RateEstimate, ...], ...]  # [i][c]: harmless refusal, direction i x coeff c at its own layer
    rep: RepIndependence | None
    redundancy: Redundancy  # over the counted directions only
    pathways: tuple[int, ...]  # counted directions that are pairwise representationally independent
    verdict_label: str  # one of verdict.LABELS
    verdict: str
    config: AuditConfig
    judge: str
    refusal_tokens: tuple[str, ...]
    discovery: Discovery | None = None
    sweep: torch.Tensor | None = None  # [n_dirs, n_layers, n_pos] cosine of DIM candidates with each direction
    positions: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    n_evaluations: int = 0
    timings: dict = field(default_factory=dict)
    kl: tuple[float, ...] = ()  # mean KL on harmless prompts of each direction's ablation
    leave_one_out: tuple[RateEstimate, ...] = ()  # [i]: harmful refusal with every direction but i ablated
    common: int | None = None  # the direction whose layer and norm the common steering test uses
    common_steering: tuple[RateEstimate, ...] = ()  # [i]: harmless refusal, direction i at the common layer/strength
    harmless_score: float | None = None  # mean logit refusal score on harmless prompts, nothing added
    induce_scores: tuple[float, ...] = ()  # [i]: the same with direction i added at the common layer/strength
    evidence: tuple[Evidence, ...] = ()  # every test showing that a direction carries refusal
    counted: tuple[int, ...] = ()  # carrying directions within the KL budget: the redundancy search's
    rising: tuple[Rise, ...] = ()  # refusal shown to rise when directions are ablated
    strongest: Strongest | None = None
    outcomes: dict = field(default_factory=dict)  # condition -> {refusal, compliance, non_answer} counts
    ablations: dict = field(default_factory=dict)  # every measured subset (frozenset) -> harmful refusal
    adaptive_attack: AdaptiveAttackResult | None = None  # the independent attacker's budget curve (`adaptive`)

    @property
    def redundancy_at_least(self) -> int:
        r = self.redundancy
        return r.number if r.number is not None and r.exact else r.lower_bound

    def carries(self) -> list[bool]:
        return carrying(self.evidence, len(self.directions))

    def inert(self) -> list[int]:
        """Directions no test showed to carry refusal in this model."""
        return [i for i, ok in enumerate(self.carries()) if not ok]

    def beyond_budget(self) -> list[int]:
        return [i for i, kl in enumerate(self.kl) if kl > self.config.kl_budget]

    def status(self, i: int) -> str:
        if i in self.pathways:
            return "pathway"
        if i in self.counted:
            return "carries"
        return "beyond KL budget" if i in self.beyond_budget() and self.carries()[i] else "inert here"

    @property
    def rising_flag(self) -> str | None:
        return f"{RISING_FLAG}: {self.rising[0].describe()}" if self.rising else None

    def to_dict(self) -> dict:
        """audit.json."""
        rates = lambda seq: [r.to_dict() for r in seq]  # noqa: E731
        return {
            "model": self.model, "source": self.source, "verdict": self.verdict, "verdict_label": self.verdict_label,
            "kl_budget": self.config.kl_budget, "carry_margin": self.config.carry_margin,
            "redundancy_number": self.redundancy.number, "redundancy_at_least": self.redundancy_at_least,
            "redundancy": self.redundancy.to_dict(),
            "independent_pathways": len(self.pathways), "independent_pathway_directions": list(self.pathways),
            "carrying": self.carries(), "counted_directions": list(self.counted), "inert_directions": self.inert(),
            "beyond_kl_budget": self.beyond_budget(), "evidence": [e.to_dict() for e in self.evidence],
            "rising_refusal": [r.to_dict() for r in self.rising], "rising_refusal_flag": self.rising_flag,
            "baseline_refusal": self.baseline.to_dict(), "harmless_refusal": self.harmless_baseline.to_dict(),
            "ablation_kl_harmless": list(self.kl),
            "single_ablation_refusal": rates(self.single),
            "pairwise_ablation_refusal": [rates(row) for row in self.pairwise],
            "leave_one_out_refusal": rates(self.leave_one_out),
            "joint_ablation_curve": self.joint.to_dict() if self.joint else None,
            "ablation_refusal": [{"ablated": sorted(s), "refusal": r.to_dict()}
                                 for s, r in sorted(self.ablations.items(), key=lambda x: (len(x[0]), sorted(x[0])))],
            "steering_refusal": {"coeffs": list(self.steering_coeffs), "refusal": [rates(row) for row in self.steering]},
            "steering_common": None if self.common is None else {
                "direction": self.common, "layer": self.directions[self.common].layer,
                "norm": self.directions[self.common].norm, "refusal": rates(self.common_steering),
                "induce_score": list(self.induce_scores), "baseline_induce_score": self.harmless_score},
            "outcomes": self.outcomes,
            "strongest_without_kl_limit": self.strongest.to_dict() if self.strongest else None,
            "adaptive_attack": self.adaptive_attack.to_dict(responses=False) if self.adaptive_attack else None,
            "cosine": self.directions.cosine().tolist() if len(self.directions) else [],
            "representational_independence": self.rep.to_dict(self.config.ri_tolerance) if self.rep else None,
            "directions": [d.metadata() for d in self.directions],
            "discovery": self.discovery.to_dict() if self.discovery else None,
            "sweep": {"positions": list(self.positions), "dim_cosine": self.sweep.tolist()} if self.sweep is not None else None,
            "threshold": self.config.threshold, "judge": self.judge, "mode": self.config.measure.mode,
            "refusal_tokens": list(self.refusal_tokens), "notes": list(self.notes),
            "n_evaluations": self.n_evaluations, "timings_s": self.timings,
            "seconds_total": round(sum(self.timings.values()), 2), "config": self.config.to_dict(),
        }


def describe_attack(attack: AdaptiveAttackResult) -> str:
    """The adaptive attacker's curve in one line: harmful refusal and compliance per KL budget."""
    cells = [f"KL <= {o.kl_budget:g}: refusal {o.refusal.value:.2f}, compliance {o.compliance.value:.2f}"
             + ("" if o.direction is not None else " (no direction fits)") for o in attack.outcomes]
    return f"adaptive attacker (own prompts and search, n={len(attack.prompts)}): " + "; ".join(cells)


def format_audit(result: AuditResult) -> str:
    """The printed table: one row per direction, then the joint figures, what counts, flags and the verdict."""
    config = result.config
    lines = [f"audit of {result.model}: {len(result.directions)} {result.source} direction(s), refusal by "
             f"{config.measure.mode} ({result.judge} judge), threshold {config.threshold}, KL budget "
             f"{config.kl_budget}, margin {config.carry_margin}",
             f"harmful refusal, nothing ablated: {result.baseline}   harmless refusal: {result.harmless_baseline}"]
    if result.single:
        own = result.steering_coeffs.index(1.0) if 1.0 in result.steering_coeffs else None
        common = result.directions[result.common]
        rule = "-" * 124
        lines += ["", f"{'dir':>3} {'layer':>5} {'pos':>4} {'method':>6} {'KL':>7}  {'ablated alone':<19} "
                      f"{'added, own (x1)':<19} {'added, common':<19} {'induce':>6}  status", rule]
        for i, d in enumerate(result.directions):
            steered = format(result.steering[i][own]) if own is not None else "-"
            lines.append(f"{i:>3} {d.layer:>5} {str(d.position):>4} {d.method:>6} {result.kl[i]:>7.3f}  "
                         f"{format(result.single[i]):<19} {steered:<19} {format(result.common_steering[i]):<19} "
                         f"{result.induce_scores[i]:>+6.2f}  {result.status(i)}")
        k = len(result.directions)
        lines += [rule, f"added, common = at layer {common.layer} with strength {common.norm:.3g} (direction "
                        f"{result.common}'s); induce = mean refusal log-odds on harmless prompts (nothing added: "
                        f"{result.harmless_score:+.2f})",
                  f"all {k} ablated: {result.joint.found[-1]}   (nothing ablated: {result.baseline})   worst order "
                  f"{list(result.joint.worst_order)}: " + ", ".join(f"{r.value:.2f}" for r in result.joint.worst[1:])]
        shown = {}
        for e in result.evidence:
            shown.setdefault(e.direction, e)
        lines += [f"carries refusal: {e.describe()}" for _, e in sorted(shown.items())]
        if result.inert():
            lines.append(f"inert here (no test showed they carry refusal; not counted): {result.inert()}")
        lines.append(f"counted (carry refusal, KL within {config.kl_budget}): {list(result.counted)}; redundancy "
                     f"searched over these only")
    if result.strongest is not None:
        lines.append(result.strongest.describe())
    if result.adaptive_attack is not None:
        lines.append(describe_attack(result.adaptive_attack))
    if result.rising_flag:
        lines.append(f"FLAG: {result.rising_flag}" + (f" (and {len(result.rising) - 1} more)" if len(result.rising) > 1 else ""))
    lines += [*(f"note: {n}" for n in result.notes), f"verdict: {result.verdict}"]
    return "\n".join(lines)
