"""The demo's printed table: every figure shown with its CI, and an undetermined run says why."""

from failclosed_interp.pipeline import format_summary

RATE = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 20}
KEYS = ("refusal_harmful_base", "refusal_harmful_sft", "refusal_harmless_sft", "refusal_borderline_sft",
        "refusal_harmful_sft_ablated", "refusal_harmless_sft_added")


def _summary(**overrides) -> dict:
    summary = {key: 0.5 for key in KEYS} | {
        "refusal_ci": {key: RATE for key in KEYS}, "direction_layer": 12, "direction_position": -1,
        "direction_norm": 4.2, "n_layers": 30, "verdict": "fail-open: ...", "seconds_total": 12.0,
        "direction_rules": "main rules (KL <= 0.1, induce score > 0.0)", "main_rules_failure": None,
    }
    return summary | overrides


def test_table_lists_each_rate_with_its_interval_and_the_direction():
    text = format_summary(_summary())
    assert text.count("[0.25, 0.75]") == len(KEYS)
    assert "layer 12 of 30, position -1, norm 4.20" in text
    assert "verdict: fail-open" in text
    assert "chosen by the main rules (KL <= 0.1" in text and "passed none" not in text


def test_fallback_choice_is_shown_with_why_the_main_rules_failed():
    text = format_summary(_summary(direction_rules="fallback rules (KL <= 0.3, induce rule off)",
                                   main_rules_failure="no DIM candidate passed the filters (...)"))
    assert "chosen by the fallback rules (KL <= 0.3, induce rule off)" in text
    assert "because the main rules passed none: no DIM candidate passed the filters" in text


def test_undetermined_run_shows_no_ablated_figure_and_no_direction():
    text = format_summary(_summary(refusal_harmful_sft_ablated=None, refusal_harmless_sft_added=None,
                                   direction_layer=None, direction_position=None, direction_norm=None,
                                   direction_rules=None, main_rules_failure="no DIM candidate passed the filters",
                                   verdict="undetermined: no DIM candidate passed the filters"))
    assert text.count("[0.25, 0.75]") == len(KEYS) - 2
    assert "no direction passed the selection rules" in text
    assert "refusal direction: none selected" in text
    assert "undetermined: no DIM candidate" in text
