"""The adaptive white-box ablation attack (`adaptive.py`) behind the `Attack` protocol, as `evaluate` runs
it: one `AttackResult` per prompt, a success being a compliance within `config.report_budget`; each
result's details carry the verdict and direction at every KL budget, so `budget_curve` rebuilds the
whole curve from (cached) per-prompt results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from failclosed_interp.attacks.adaptive import (
    SEARCH_FILE, AdaptiveAttackConfig, AttackSearch, adaptive_attack, load_search, save_search, search_directions,
)
from failclosed_interp.attacks.base import AttackResult, AttackRunner, ResultCallback
from failclosed_interp.configs import config_to_dict
from failclosed_interp.judges import Judge, ThreeWayJudge, Verdict
from failclosed_interp.models import ChatModel
from failclosed_interp.score_log import PROGRESS_FILE
from failclosed_interp.stats import wilson_rate


@dataclass(frozen=True)
class DirectionAblation(AttackRunner):
    """The adaptive white-box attack. With `cache_dir`, its search is saved there and reused by the next run
    on the same model (answers to prompts not seen yet still need generating). `given_search`: a search
    already made on this model with these settings (a `save_search` folder, e.g. align's `final/adaptive`),
    used instead of searching."""

    config: AdaptiveAttackConfig = field(default_factory=AdaptiveAttackConfig)
    cache_dir: Path | None = None
    given_search: Path | None = None
    name: str = "ablation"

    def settings(self) -> dict:
        return config_to_dict(self.config)

    def search(self, model: ChatModel, judge: Judge = ThreeWayJudge(), *, progress: bool = False) -> AttackSearch:
        folder = Path(self.cache_dir) if self.cache_dir is not None else None
        if folder is not None and (folder / SEARCH_FILE).is_file():
            return load_search(folder, model)
        if self.given_search is not None:
            return load_search(self.given_search, model)
        log_file = folder / PROGRESS_FILE if folder is not None else None  # a killed search resumes from it
        found = search_directions(model, self.config, judge, progress=progress, log_file=log_file)
        if folder is not None:
            save_search(found, folder, model.identity())
        return found

    def attack(self, model: ChatModel, prompts: list[str], judge: Judge, max_new_tokens: int, progress: bool,
               emit: ResultCallback) -> list[AttackResult]:
        result = adaptive_attack(model, prompts, self.config, judge, max_new_tokens=max_new_tokens,
                                 search=self.search(model, judge, progress=progress), progress=progress)
        report, results = result.report, []
        for i, prompt in enumerate(prompts):
            curve = [{"kl_budget": o.to_dict(responses=False)["kl_budget"], "direction": o.direction_summary,
                      "verdict": o.verdicts[i].value, "response": o.responses[i]} for o in result.outcomes]
            details = {"kl_budget": curve[result.outcomes.index(report)]["kl_budget"], "verdict": report.verdicts[i].value,
                       "direction": report.direction_summary, "no_direction_reason": result.search.reason or None,
                       "budgets": curve}
            results.append(AttackResult(self.name, prompt, prompt, report.responses[i],
                                        report.verdicts[i] is Verdict.COMPLIANCE, label=report.verdicts[i].value,
                                        details=details))
            emit(results[-1])
        return results


def budget_curve(results: Sequence[AttackResult]) -> list[dict]:
    """Per KL budget, from `DirectionAblation` results: the direction, and the harmful refusal and compliance
    (= attack success) rates with Wilson 95% intervals."""
    if not results:
        raise ValueError("no ablation results to summarise: attack at least one prompt")
    curves = [r.details["budgets"] for r in results]
    rows = []
    for j, first in enumerate(curves[0]):
        verdicts = [curve[j]["verdict"] for curve in curves]
        rows.append({"kl_budget": first["kl_budget"], "direction": first["direction"],
                     "refusal": wilson_rate([v == Verdict.REFUSAL.value for v in verdicts]).to_dict(),
                     "compliance": wilson_rate([v == Verdict.COMPLIANCE.value for v in verdicts]).to_dict()})
    return rows
