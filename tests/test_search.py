"""The one direction search: every path that finds a refusal direction (the demo's direction job, the
progressive loop, the audit's discovery and adaptive check, the adaptive attacker) goes through
`search.dim_search`; the span test has one threshold; refusal tokens come from the model's own refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import failclosed_interp.search as search
from _planted_pathways import FAST, cosine, planted, prompts_of
from failclosed_interp.align import align
from failclosed_interp.attacks import AdaptiveAttackConfig, search_directions
from failclosed_interp.audit import run_audit
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.models import load_model
from failclosed_interp.jobs import direction_job
from failclosed_interp.prompts import builtin
from failclosed_interp.scoring import NoRefusals
from failclosed_interp.search import DirectionJobConfig, InsideSpan, check_new, own_refusal_tokens
from test_align import tiny_config


class Reached(Exception):
    """Raised by the spy where a search computes its DIM candidates."""


@pytest.fixture
def spied(monkeypatch):
    """Stops every search at its DIM sweep and records who got there. Only `search.dim_search` looks these
    two names up in the search module, so reaching the spy means the caller went through it."""
    calls = []

    def candidates(model, harmful, harmless, config, interventions=(), *, progress=False):
        calls.append((tuple(harmful), tuple(harmless), config, tuple(interventions)))
        raise Reached

    monkeypatch.setattr(search, "dim_candidates", candidates)
    monkeypatch.setattr(search, "own_refusal_tokens", lambda *a, **k: ([0], None))
    return calls


def test_the_demo_direction_job_goes_through_the_search(spied, tmp_path):
    config = DirectionJobConfig(n_train=3, n_val=2)
    with pytest.raises(Reached):
        direction_job(load_model("tiny-llama"), tmp_path, config, progress=False)
    assert spied[0][:2] == (tuple(config.prompts("harmful", "train")), tuple(config.prompts("harmless", "train")))


def test_the_progressive_loop_goes_through_the_search(spied, tmp_path):
    config = dataclasses.replace(tiny_config("failclosed", rounds=1), rdo=None)
    with pytest.raises(Reached):
        align(config, tmp_path, progress=False)  # round 0 trains, then looks for the direction it taught
    assert len(spied) == 1


def test_the_attacker_goes_through_the_search(spied):
    toy = planted(1)
    p = toy.prompts
    config = AdaptiveAttackConfig(harmful=p.harmful_train + p.harmful_val, harmless=p.harmless_train + p.harmless_val,
                                  n_fit=4, rdo_steps=0, n_verify=0)
    with pytest.raises(Reached):
        search_directions(toy.model, config)
    assert spied[0][:2] == (tuple(config.prompts("harmful")[0]), tuple(config.prompts("harmless")[0]))


def test_the_audit_discovery_and_its_adaptive_attacker_go_through_the_search(spied):
    toy = planted(1)
    prompts = prompts_of(toy)
    with pytest.raises(Reached):
        run_audit(toy.model, prompts, FAST)  # discovery
    p = toy.prompts
    attacker = AdaptiveAttackConfig(harmful=p.harmful_train + p.harmful_val, harmless=p.harmless_train + p.harmless_val,
                                    n_fit=4, rdo_steps=0, n_verify=0)
    with pytest.raises(Reached):  # --adaptive: the independent attacker, on its own prompts
        run_audit(toy.model, prompts, dataclasses.replace(FAST, adaptive=True, attacker=attacker), toy.directions())
    assert len(spied) == 2 and spied[0][:2] == (prompts.harmful_train, prompts.harmless_train)
    assert spied[1][:2] == (tuple(attacker.prompts("harmful")[0]), tuple(attacker.prompts("harmless")[0]))
    assert spied[0][3] == ()  # the first discovery round ablates nothing yet


# --- the span test -------------------------------------------------------------------------------------------


def test_a_direction_outside_the_span_passes_and_one_inside_is_refused_with_the_threshold_named():
    e = torch.eye(4)
    earlier = DirectionSet((Direction(e[0], layer=0), Direction(e[1], layer=0)))
    assert check_new(Direction(e[2], layer=1), earlier, 0.1) == pytest.approx(1.0)
    assert check_new(Direction(e[0], layer=1), DirectionSet(), 0.1) == 1.0  # nothing earlier: everything is new
    tilted = Direction(e[0] + 0.05 * e[2], layer=3)
    assert check_new(tilted, earlier, 0.01) == pytest.approx(0.05 / (1 + 0.05**2) ** 0.5)
    with pytest.raises(InsideSpan, match=r"\(layer 3\) lies inside the span of the 2 earlier .* < min_new_component=0.1"):
        check_new(tilted, earlier, 0.1)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan")])
def test_configs_refuse_a_min_new_component_outside_0_1(value):
    from failclosed_interp.align import AlignConfig
    from failclosed_interp.audit import AuditConfig

    for cls in (AlignConfig, AuditConfig):
        with pytest.raises(ValueError, match=rf"{cls.__name__}.min_new_component must be in \(0, 1\]"):
            cls(min_new_component=value)


# --- refusal tokens and prompts ------------------------------------------------------------------------------


def test_refusal_tokens_come_from_the_models_own_refusals():
    toy = planted(1)
    harmful, harmless = list(toy.prompts.harmful_val[:4]), list(toy.prompts.harmless_val[:4])
    tokens, judged = own_refusal_tokens(toy.model, harmful, max_new_tokens=8)
    assert toy.model.tokenizer.decode(tokens[:1]).strip().startswith("I") and len(judged.responses) == 4
    with pytest.raises(NoRefusals, match=r"refused none of 4 harmful prompts"):
        own_refusal_tokens(toy.model, harmless, max_new_tokens=8)


def test_find_direction_reads_the_refusal_tokens_itself_when_none_are_given():
    toy = planted(1)
    p = prompts_of(toy)
    given = search.find_direction(toy.model, p.harmful_train, p.harmless_train, p.harmful_val, p.harmless_val,
                                  own_refusal_tokens(toy.model, p.harmful_val)[0], progress=False)
    found = search.find_direction(toy.model, p.harmful_train, p.harmless_train, p.harmful_val, p.harmless_val,
                                  progress=False)
    assert found.refusal_tokens == given.refusal_tokens and len(found.refusal_tokens) >= 1
    assert torch.equal(found.direction.vector, given.direction.vector)
    assert cosine(found.direction.vector, toy.pathways[0]) > 0.9


def test_take_up_to_treats_the_size_as_a_ceiling():
    test = builtin("harmful", "test")
    assert test.take_up_to(10_000, seed=1).instructions == test.instructions
    assert test.take_up_to(3, seed=1) == test.take(3, seed=1)
    with pytest.raises(ValueError, match="at least 1"):
        test.take_up_to(0)
