"""Orthogonal RDO directions on the planted one-pathway model: the first mediates refusal, the ones kept
orthogonal to it do not; every direction is orthogonal to the earlier ones and checked once."""

from __future__ import annotations

import json

import pytest
import torch

from _planted import HARMFUL, HARMFUL_VAL, HARMLESS, HARMLESS_VAL, compliant_planted_model
from failclosed_interp.directions import Direction
from failclosed_interp.orthogonal_rdo import orthogonal_directions
from failclosed_interp.rdo import RDOConfig, rdo_targets

CONFIG = RDOConfig(steps=30, batch_size=4, micro_batch_size=4, target_tokens=8, start="init")


@pytest.fixture(scope="module")
def planted_run():
    model, planted, refusal = compliant_planted_model()
    noise = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5))
    noise -= (noise @ planted) * planted
    reference = Direction(planted + 0.5 * noise / noise.norm(), layer=1, position=-1, norm=4.0, fitted_on="test")
    targets = rdo_targets(model, HARMFUL, HARMLESS, reference, CONFIG, progress=False)
    seen = []
    run = orthogonal_directions(model, reference, targets, [refusal], HARMFUL_VAL, HARMLESS_VAL, k=3, config=CONFIG,
                                on_direction=lambda i, check, direction: seen.append((i, check["k"])), progress=False)
    return run, planted, seen, (model, reference, targets, refusal)


def test_one_planted_pathway_gives_one_mediating_direction(planted_run):
    run, planted, _, _ = planted_run
    first = run.checks[0]
    assert first["mediates"] and abs(float(run.directions[0].vector @ planted)) > 0.9
    assert run.n_mediating == 1 and not any(c["mediates"] for c in run.checks[1:])
    assert all(abs(float(d.vector @ planted)) < 0.2 for d in list(run.directions)[1:])


def test_each_direction_is_orthogonal_to_the_earlier_ones_and_checked_once(planted_run):
    run, _, seen, _ = planted_run
    vectors = run.directions.matrix().double()
    gram = vectors @ vectors.T
    assert torch.allclose(gram, torch.eye(3, dtype=torch.float64), atol=1e-4)
    assert seen == [(0, 1), (1, 2), (2, 3)] and [c["k"] for c in run.checks] == [1, 2, 3]
    data = json.loads(json.dumps(run.to_dict()))
    assert data["n_mediating"] == 1 and data["k"] == 3 and data["min_rise"] == 1.0


def test_a_resumed_run_ends_as_an_uninterrupted_one(planted_run):
    from failclosed_interp.directions import DirectionSet

    run, _, _, (model, reference, targets, refusal) = planted_run
    first = (DirectionSet(tuple(run.directions)[:1]), run.checks[:1])
    resumed = orthogonal_directions(model, reference, targets, [refusal], HARMFUL_VAL, HARMLESS_VAL, k=2, config=CONFIG,
                                    resume=first, progress=False)
    assert torch.equal(resumed.directions.matrix(), run.directions.matrix()[:2])
    assert [c["harmless_score_rise"] for c in resumed.checks] == [c["harmless_score_rise"] for c in run.checks[:2]]


def test_bad_settings_are_refused(planted_run):
    _, _, _, (model, reference, targets, refusal) = planted_run
    with pytest.raises(ValueError, match="k must be >= 1"):
        orthogonal_directions(model, reference, targets, [refusal], HARMFUL_VAL, HARMLESS_VAL, k=0, progress=False)
    with pytest.raises(ValueError, match="the checks need harmful and harmless prompts"):
        orthogonal_directions(model, reference, targets, [refusal], [], HARMLESS_VAL, k=1, progress=False)


def test_the_results_page_shows_every_models_directions_and_says_which_are_unfinished(tmp_path, planted_run):
    from failclosed_interp.reproduce.measurement_sections import ORTHOGONAL_FILE
    from failclosed_interp.reproduce.page import render_results

    run = planted_run[0]
    root = tmp_path / "results"
    root.mkdir()
    settings = {"model": "toy", "reference_adapter": "runs/x/round_0/adapter", "k": 3, "setting": "demo",
                "n_train": 8, "n_val": 4}
    models = {"sft": {**run.to_dict(), "adapter": "a", "finished": True},
              "failclosed": {"adapter": "b", "checks": list(run.checks[:1]), "finished": False}}
    (root / ORTHOGONAL_FILE).write_text(json.dumps({
        "settings": settings, "machine": {"cpus": 2, "torch": "2", "load_average_at_start": [1.0, 1.0, 1.0]}, "models": models,
        "reference": {"layer": 1, "norm": 4.0, "rules": "fallback", "n_pairs": 8, "targets": "no filter"}}))
    page = render_results(root)
    assert "**sft** (`a`): 1 of 3 mediate (margins: drop >= 1.0, rise >= 1.0)" in page
    assert "**failclosed** (`b`): unfinished: 1 of 3 directions so far" in page
    first = run.checks[0]
    assert f"| 1 | {first['cosine_to_reference']:.2f} | {first['harmful_score_drop']:.2f} |" in page
