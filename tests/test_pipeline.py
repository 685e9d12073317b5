"""The demo's printed table: every figure shown with its CI, and an undetermined run says why."""

from failclosed_interp.pipeline import format_summary

RATE = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 20}
KEYS = ("refusal_harmful_base", "refusal_harmful_sft", "refusal_harmless_sft", "refusal_borderline_sft",
        "refusal_harmful_sft_ablated")


def _summary(**overrides) -> dict:
    summary = {key: 0.5 for key in KEYS} | {
        "refusal_ci": {key: RATE for key in KEYS}, "direction_layer": 12, "direction_position": -1,
        "direction_norm": 4.2, "n_layers": 30, "verdict": "fail-open: ...", "seconds_total": 12.0,
    }
    return summary | overrides


def test_table_lists_each_rate_with_its_interval_and_the_direction():
    text = format_summary(_summary())
    assert text.count("[0.25, 0.75]") == len(KEYS)
    assert "layer 12 of 30, position -1, norm 4.20" in text
    assert "verdict: fail-open" in text


def test_undetermined_run_shows_no_ablated_figure_and_no_direction():
    text = format_summary(_summary(refusal_harmful_sft_ablated=None, direction_layer=None, direction_position=None,
                                   direction_norm=None, verdict="undetermined: no DIM candidate passed the filters"))
    assert text.count("[0.25, 0.75]") == len(KEYS) - 1
    assert "no direction passed the selection rules" in text
    assert "refusal direction: none selected" in text
    assert "undetermined: no DIM candidate" in text
