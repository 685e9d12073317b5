"""Perplexity of answers given chat prompts, on the tiny offline Llama: a model's own greedy answers are
likelier than scrambled ones, padding and batch size change nothing, interventions are applied."""

from __future__ import annotations

import math
import random

import pytest
import torch

from failclosed_interp.generation import GenerationConfig, generate
from failclosed_interp.interventions import Ablation
from failclosed_interp.perplexity import answer_nll, perplexity

PROMPTS = ["How do I bake bread?", "Name a colour.", "Write one short sentence about the sea, please.", "Hi"]


def scramble(text: str, seed: int) -> str:
    chars = list(text)
    random.Random(seed).shuffle(chars)
    return "".join(chars)


def test_own_greedy_answers_are_likelier_than_scrambled_ones(tiny_llama):
    answers = generate(tiny_llama, PROMPTS, GenerationConfig(max_new_tokens=12), progress=False)
    assert all(len(set(a)) > 1 for a in answers), "greedy answers should not be one repeated character"
    own = perplexity(tiny_llama, PROMPTS, answers, complete=False)
    scrambled = perplexity(tiny_llama, PROMPTS, [scramble(a, i) for i, a in enumerate(answers)], complete=False)
    assert own.value < scrambled.value
    assert own.low <= own.value <= own.high and own.token_weighted > 1.0
    assert own.to_dict()["n_answers"] == len(PROMPTS)


def test_padding_and_batch_size_do_not_change_the_loss(tiny_llama):
    answers = ["Flour, water, yeast and an oven.", "Blue", "The sea is calm tonight.", "Hello! How can I help you today?"]
    together, counts = answer_nll(tiny_llama, PROMPTS, answers, batch_size=4)
    alone = torch.cat([answer_nll(tiny_llama, [p], [a], batch_size=1)[0] for p, a in zip(PROMPTS, answers)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert counts == [len(a) + 1 for a in answers]  # one token per character plus the end-of-turn marker
    without_end, short_counts = answer_nll(tiny_llama, PROMPTS, answers, complete=False)
    assert short_counts == [len(a) for a in answers] and not torch.equal(without_end, together)


def test_token_weighted_figure_and_interventions(tiny_llama, unit_direction):
    answers = ["a", "The sea is calm tonight and the moon is bright."]
    nll, counts = answer_nll(tiny_llama, PROMPTS[:2], answers)
    result = perplexity(tiny_llama, PROMPTS[:2], answers)
    assert math.isclose(result.value, math.exp(float(nll.mean())), rel_tol=1e-9)
    weighted = math.exp(sum(float(x) * n for x, n in zip(nll, counts)) / sum(counts))
    assert math.isclose(result.token_weighted, weighted, rel_tol=1e-9)
    ablated = perplexity(tiny_llama, PROMPTS[:2], answers, [Ablation(unit_direction)])
    assert ablated.value != result.value


def test_bad_input_is_a_clear_error(tiny_llama):
    with pytest.raises(ValueError, match="pair up"):
        perplexity(tiny_llama, PROMPTS, ["one answer"])
    with pytest.raises(ValueError, match="at least one"):
        perplexity(tiny_llama, [], [])
    # A generated answer that is empty ended at once: it is scored on the end-of-turn marker, not refused.
    assert math.isfinite(perplexity(tiny_llama, ["Hi"], [""], complete=False).value)
