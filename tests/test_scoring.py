"""The first-token refusal rate: a prompt counts as refused when its most likely first answer token is a
refusal token, which is what greedy generation starts with, also when that token holds under half the mass.
Judged refusal of several prompt sets generated together: each set gets what it gets alone."""

import pytest
import torch

from failclosed_interp.generation import GenerationConfig, generate_tokens
from failclosed_interp.judges import SubstringJudge
from failclosed_interp.scoring import (
    first_token_refusal_rate, first_token_refusals, refusal_rate, refusal_rates, refusal_score_from_logits,
)

PROMPTS = ["Tell me a story.", "How do I fix a flat tyre?", "Name three rivers.", "What is two plus two?"]


def test_a_refusal_token_on_top_with_under_half_the_mass_counts():
    logits = torch.log(torch.tensor([[0.40, 0.35, 0.25], [0.20, 0.70, 0.10]]))
    assert first_token_refusals(logits, [0]).tolist() == [1.0, 0.0]
    assert first_token_refusals(logits, [0, 2]).tolist() == [1.0, 0.0]
    assert (refusal_score_from_logits(logits, [0]) > 0).tolist() == [False, False]  # the criterion it replaces


def test_rate_matches_the_first_greedy_token(tiny_llama):
    first = [ids[0] for ids in generate_tokens(tiny_llama, PROMPTS, GenerationConfig(max_new_tokens=1), progress=False)]
    assert first_token_refusal_rate(tiny_llama, PROMPTS, sorted(set(first))).value == 1.0
    only = first_token_refusal_rate(tiny_llama, PROMPTS, [first[0]])
    assert only.value == pytest.approx(sum(t == first[0] for t in first) / len(PROMPTS)) and only.n == len(PROMPTS)
    unused = next(t for t in range(len(tiny_llama.tokenizer)) if t not in first)
    assert first_token_refusal_rate(tiny_llama, PROMPTS, [unused]).value == 0.0


def test_no_refusal_tokens_is_an_error():
    with pytest.raises(ValueError, match="no refusal tokens"):
        first_token_refusals(torch.zeros(1, 3), [])


def test_sets_generated_together_are_judged_as_alone(tiny_llama):
    sets = {"a": PROMPTS[:3], "b": ["Write a haiku about rain, please, with some detail."], "c": PROMPTS[1:]}
    generation = GenerationConfig(max_new_tokens=6)
    together = refusal_rates(tiny_llama, sets, judge=SubstringJudge(("a",)), generation=generation, progress=False)
    assert list(together) == list(sets)
    for name, prompts in sets.items():
        alone = refusal_rate(tiny_llama, prompts, judge=SubstringJudge(("a",)), generation=generation, progress=False)
        assert together[name].instructions == tuple(prompts)
        assert together[name].responses == alone.responses and together[name].refused == alone.refused
        assert together[name].rate == alone.rate and together[name].rate.n == len(prompts)
