"""The demo job on a tiny model (folders, seeding, the model it trains) and its printed table: every
figure shown with its CI, and an undetermined run says why."""

import json

from failclosed_interp.adapters import LoraSettings
from failclosed_interp.jobs import DemoConfig, demo_job, format_summary
from failclosed_interp.search import DirectionJobConfig
from failclosed_interp.training import SFTConfig, TrainConfig

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


def _tiny_demo(out) -> dict:
    # The SFT config names a model that does not exist: the demo must train the model it was given.
    sft = SFTConfig(model="no-such-model", n_harmful=4, n_harmless=4, n_borderline=2, answer_tokens=4,
                    train=TrainConfig(epochs=1, batch_size=4, lr=1e-2, max_length=200, lora=LoraSettings(r=2, alpha=4)))
    config = DemoConfig(model="tiny-llama", n_eval=3, eval_tokens=4, sft=sft,
                        directions=DirectionJobConfig(n_train=4, n_val=2))
    return demo_job(out, config, progress=False)


def test_demo_job_writes_a_seeded_sft_run_and_a_summary(tmp_path):
    summary = _tiny_demo(tmp_path / "a")
    sft_dir = tmp_path / "a" / "sft"
    assert json.loads((sft_dir / "sft_config.json").read_text())["model"] == "tiny-llama"
    assert len(json.loads((sft_dir / "examples.json").read_text())) == 10
    assert json.loads((sft_dir / "training.json").read_text())["steps"] >= 1
    assert json.loads((tmp_path / "a" / "summary.json").read_text()) == summary
    assert 0.0 <= summary["refusal_harmful_base"] <= 1.0 and 0.0 <= summary["refusal_harmful_sft"] <= 1.0
    assert summary["seconds_total"] > 0
    # A random tiny model refuses nothing, so no direction can be located; the summary says so.
    if summary["direction_layer"] is None:
        assert summary["verdict"].startswith("undetermined: ")
    # Same config, same adapter: the LoRA init is seeded, not drawn from whatever the global RNG holds.
    _tiny_demo(tmp_path / "b")
    adapter = "sft/adapter/adapter_model.safetensors"
    assert (tmp_path / "a" / adapter).read_bytes() == (tmp_path / "b" / adapter).read_bytes()
