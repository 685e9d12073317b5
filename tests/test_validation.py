"""The grid's validation experiment on a tiny model: it answers built-in VALIDATION prompts and no test prompt
(every prompt that reaches the model is recorded), the attacker's own prompts share nothing with them, and
the XSTest column comes from that set's validation half, added later without measuring the rest again."""

from __future__ import annotations

import pytest

from failclosed_interp.models import load_model
from failclosed_interp.prompts import builtin
from failclosed_interp.prompts.public import public_set
from failclosed_interp.reproduce import validation as validation_module
from failclosed_interp.reproduce.grid import recipe_config, validation_config
from failclosed_interp.reproduce.validation import ValidationConfig, validate, validation_prompts
from tests._public_data import write_public_data


@pytest.fixture
def recorded(monkeypatch):
    """A tiny model whose tokenizer records the user text of every chat prompt it formats."""
    model = load_model("tiny-llama")
    seen: list[str] = []
    template = model.tokenizer.apply_chat_template

    def recording(messages, *args, **kwargs):
        seen.extend(m["content"] for m in messages if m["role"] == "user")
        return template(messages, *args, **kwargs)

    monkeypatch.setattr(model.tokenizer, "apply_chat_template", recording)
    return model, seen


def test_the_validation_split_is_disjoint_from_the_test_and_attack_splits():
    for kind in ("harmful", "harmless", "borderline"):
        val = set(builtin(kind, "val").to_list())
        others = ("test", "attack") if kind != "borderline" else ("test",)
        assert all(not val & set(builtin(kind, split).to_list()) for split in others)


def test_validation_answers_only_validation_prompts_then_adds_xstest_alone(recorded, tmp_path, monkeypatch):
    model, seen = recorded
    config = validation_config(recipe_config("sft", 0, quick=True), 0, quick=True)
    result = validate(model, config, tmp_path)
    for key in ("refusal_harmful", "refusal_harmless", "refusal_borderline", "refusal_harmful_adaptive_ablated"):
        assert 0.0 <= result[key] <= 1.0 and result["ci"][key]["value"] == result[key]
    assert result["ci"]["refusal_harmful"]["n"] == 3 and result["n"] == {"harmful": 3, "harmless": 3, "borderline": 3}
    assert result["xstest_safe"] is None and result["adaptive_search"] == "searched"

    tests = {p for kind in ("harmful", "harmless", "borderline") for p in builtin(kind, "test").to_list()}
    assert not tests & set(seen), "a test prompt reached the validation experiment"
    for kind, prompts in validation_prompts(config).items():
        assert set(prompts) <= set(seen) and set(prompts) <= set(builtin(kind, "val").to_list())

    def measured_again(*_args, **_kwargs):
        raise AssertionError("the built-in figures were measured again")

    monkeypatch.setattr(validation_module, "_builtin_figures", measured_again)
    seen.clear()
    data = write_public_data(tmp_path / "data")
    again = validate(model, config, tmp_path, data)
    assert {k: v for k, v in again.items() if k != "xstest_safe"} == {k: v for k, v in result.items() if k != "xstest_safe"}
    assert again["xstest_safe"]["n"] == 2 and again["xstest_safe"]["expects"] == "answer"
    assert set(seen) <= set(public_set(data, "xstest_safe", "val").to_list())


def test_bad_validation_settings_are_refused():
    with pytest.raises(ValueError, match="n must be >= 1 or None"):
        ValidationConfig(n=0)
    with pytest.raises(ValueError, match="64"):
        ValidationConfig(attacker_tokens=8)
