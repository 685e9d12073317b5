"""The defender's broad search (AlignConfig.search "broad"): the attacker's procedure with the defender's prompts.
On planted toys it finds the planted pathway within its KL budget, never offers a direction inside the span of
the ones trained against, writes its table and resumes from its log; the loop trains against its choice."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from failclosed_interp.align import AlignConfig, recipe
from failclosed_interp.attacks import AdaptiveAttackConfig
from failclosed_interp.broad_search import BROAD_SEARCH, SEARCH_FILE, broad_direction, defender_settings
from failclosed_interp.directions import DirectionSet
from failclosed_interp.judges import SubstringJudge
from failclosed_interp.prompts import builtin
from failclosed_interp.search import DirectionJobConfig
from failclosed_interp.toys import planted_pathways_model

TOY_JUDGE = SubstringJudge()  # the toys babble when they do not refuse: "compliance" means "not a refusal" here


def toy_settings(toy, **changes) -> AdaptiveAttackConfig:
    p = toy.prompts
    settings = dict(harmful=p.harmful_train + p.harmful_val, harmless=p.harmless_train + p.harmless_val, n_fit=12,
                    rdo_steps=0, kl_budgets=(0.1,), report_budget=0.1)
    return AdaptiveAttackConfig(**{**settings, **changes})


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs(float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0)))


def test_it_finds_the_planted_pathway_within_its_budget_and_writes_its_table(tmp_path):
    toy = planted_pathways_model(1)
    direction, tokens, note = broad_direction(toy.model, toy_settings(toy), DirectionJobConfig(), DirectionSet(), 0.1,
                                              tmp_path, judge=TOY_JUDGE)
    assert cosine(direction.vector, toy.pathways[0]) > 0.9 and direction.scores["kl"] <= 0.1 and tokens
    assert note["broad_search"]["kl_budget"] == 0.1 and note["broad_search"]["layer"] == direction.layer
    table = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert table["choices"][0]["layer"] == direction.layer and len(table["candidates"]) == note["broad_search"]["n_candidates"]
    # run again on the same model and settings: every score is read back from the log, none computed
    again, _, _ = broad_direction(toy.model, toy_settings(toy), DirectionJobConfig(), DirectionSet(), 0.1, tmp_path,
                                  judge=TOY_JUDGE)
    torch.testing.assert_close(again.vector, direction.vector)


def test_directions_inside_the_span_of_the_trained_against_ones_are_no_candidates(tmp_path, monkeypatch):
    import failclosed_interp.broad_search as module

    toy = planted_pathways_model(2)
    trained_against = DirectionSet((toy.directions()[0],))
    settings = toy_settings(toy, kl_budgets=(float("inf"),), report_budget=float("inf"))
    searches = []

    def recorded(*args, **kwargs):
        searches.append(module.search_directions.__wrapped__(*args, **kwargs))
        return searches[-1]

    recorded.__wrapped__ = module.search_directions
    monkeypatch.setattr(module, "search_directions", recorded)
    for found, folder in ((DirectionSet(), "alone"), (trained_against, "after")):
        broad_direction(toy.model, settings, DirectionJobConfig(), found, 0.5, tmp_path / folder, judge=TOY_JUDGE)
    every, new = (s.candidates for s in searches)
    assert min(trained_against.residual_norm(c.vector) for c in every) < 0.5  # the first pathway is among them
    assert len(new) and min(trained_against.residual_norm(c.vector) for c in new) >= 0.5
    assert max(cosine(c.vector, toy.pathways[1]) for c in new) > 0.9  # the second one is still offered


def test_it_reads_the_defenders_train_and_validation_prompts_never_the_attackers():
    jc = DirectionJobConfig(n_train=8, n_val=4)
    config = defender_settings(BROAD_SEARCH, jc)
    for kind in ("harmful", "harmless"):
        fit, score = config.prompts(kind)
        assert set(fit) | set(score) == set(jc.prompts(kind, "train")) | set(jc.prompts(kind, "val"))
        assert len(fit) == 8 and not set(fit + score) & set(builtin(kind, "attack"))
    own = dataclasses.replace(BROAD_SEARCH, harmful=("a", "b", "c"), harmless=("d", "e", "f"), n_fit=1)
    assert defender_settings(own, jc) is own  # prompts the user gave are kept


def test_the_broad_recipe_trains_dim_directions_and_a_broad_search_with_rdo_is_refused():
    config = recipe("broad")
    assert (config.search, config.mode, config.rdo, config.defender_search) == ("broad", "cumulative", None, BROAD_SEARCH)
    assert recipe("broad-subsets") == dataclasses.replace(config, mode="random-subsets")
    assert "defender_search" in config.to_dict() and AlignConfig.from_dict(config.to_dict()) == config
    assert "defender_search" not in AlignConfig().to_dict()  # left out at its default: older runs keep their identity
    with pytest.raises(ValueError, match="search 'broad' chooses among DIM candidates itself"):
        AlignConfig(search="broad")
