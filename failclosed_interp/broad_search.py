"""The defender's broad direction search (`AlignConfig.search="broad"`, this project's own): each round trains
against the direction a white-box attacker would ablate now, found with the defender's own prompts.

Why: the loop's DIM and RDO searches look at a few positions, choose by selection rules, and measure a
direction's KL with it ablated at every position (the template prefix too). On the embedded model the
independent attacker breaks every recipe trained that way with a direction none of them trained against: a
last-token direction of a middle layer whose KL is low when the template prefix is left alone and over the rule
when it is ablated (docs/results.md, "The attacker's direction against the directions trained against").

What: the adaptive attacker's procedure (`attacks.adaptive.search_directions`): the difference in means at every
layer x post-instruction position, each candidate ablated with the chat template's prefix left alone and ablated,
the mean KL on harmless prompts within one budget (`settings.report_budget`), the strongest few verified by
generating answers, the most compliant chosen. Its prompts are the defender's: the built-in train and validation
splits that the other searches read (fit on `n_train` of them, score on the rest, at random, seeded), never the
attacker's own split, unless `settings` names prompts of its own. Directions inside the span of the ones trained
against already (new component below `min_new_component`) are no candidates. The chosen direction is trained
against at every position, as every direction of the loop is (`AlignConfig.skip_template_prefix`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from failclosed_interp.artifacts import write_json
from failclosed_interp.attacks.adaptive import AdaptiveAttackConfig, search_directions
from failclosed_interp.dim import NoDirectionPassed
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.judges import Judge, ThreeWayJudge
from failclosed_interp.models import ChatModel
from failclosed_interp.score_log import PROGRESS_FILE
from failclosed_interp.scoring import NoRefusals
from failclosed_interp.search import DirectionJobConfig, InsideSpan, check_new

# The search settings when a run names none: one KL budget (the one the attacker is reported at), DIM candidates only.
BROAD_SEARCH = AdaptiveAttackConfig(kl_budgets=(0.3,), report_budget=0.3, rdo_steps=0)
SEARCH_FILE = "broad_search.json"


def defender_settings(settings: AdaptiveAttackConfig, directions: DirectionJobConfig) -> AdaptiveAttackConfig:
    """`settings` with the defender's prompts (the train then validation prompts of `directions`, fitting on as
    many as the train part holds) where it names none."""
    if settings.harmful is not None and settings.harmless is not None:
        return settings
    train = {kind: directions.prompts(kind, "train") for kind in ("harmful", "harmless")}
    prompts = {kind: tuple(train[kind] + directions.prompts(kind, "val")) for kind in train}
    return dataclasses.replace(settings, harmful=settings.harmful or prompts["harmful"],
                               harmless=settings.harmless or prompts["harmless"], n_fit=min(map(len, train.values())))


def broad_direction(model: ChatModel, settings: AdaptiveAttackConfig, directions: DirectionJobConfig,
                    found: DirectionSet, min_new_component: float, folder: str | Path, *,
                    judge: Judge = ThreeWayJudge(), progress: bool = False) -> tuple[Direction, tuple[int, ...], dict]:
    """(the chosen direction, the refusal tokens it was scored with, a note of the choice) for the current model.
    The search keeps its scores in `folder` as they come (a killed search resumes) and writes its table there;
    `judge` labels the answers that verify the strongest candidates.
    Raises `NoRefusals` when the model refuses none of the prompts and `NoDirectionPassed` when no new
    candidate fits the KL budget."""
    folder = Path(folder)
    config = defender_settings(settings, directions)

    def is_new(direction: Direction) -> bool:
        try:
            check_new(direction, found, min_new_component)
        except InsideSpan:
            return False
        return True

    search = search_directions(model, config, judge, progress=progress, log_file=folder / PROGRESS_FILE,
                               admit=is_new)
    write_json(folder / SEARCH_FILE, search.to_dict())
    if search.reason:
        raise NoRefusals(search.reason)
    budget = config.report_budget
    index = search.chosen_index(budget)
    if index is None:
        raise NoDirectionPassed(f"the broad search found no new candidate whose ablation keeps the harmless KL within "
                                f"{budget} ({len(search.candidates)} candidates scored); raise the budget "
                                f"(defender_search.report_budget) or stop here")
    note = {"broad_search": {"kl_budget": budget, **search.describe(index), "n_candidates": len(search.candidates)}}
    return search.candidates[index], search.refusal_tokens, note
