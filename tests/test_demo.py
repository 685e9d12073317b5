"""The main job on a tiny model (directions, targets and RDO replaced by recorders, as in test_align_rdo):
round 0 is reported as soon as it ends, both models get the same figures and audit, the run resumes, and
the printed table shows every figure with its interval."""

import dataclasses
import json

import pytest

from failclosed_interp.adapters import adapter_digest
from failclosed_interp.align import recipe
from failclosed_interp.cli import main
from failclosed_interp.demo import (
    DemoConfig,
    contrast,
    demo_audit,
    demo_job,
    demo_recipe,
    format_round,
    format_summary,
    ran_current_settings,
)
from test_align import TINY_ATTACKER, tiny_config
from test_align_rdo import spied_loop  # noqa: F401 (fixture)

RATE = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 20, "interval": "wilson"}


def _tiny(rounds: int = 2) -> DemoConfig:
    align = dataclasses.replace(tiny_config("failclosed", rounds=rounds), round_checks="logit", attacker=None)
    audit = dataclasses.replace(demo_audit(), n_train=4, n_val=2, attacker=TINY_ATTACKER)
    return DemoConfig(model="tiny-llama", n_eval=3, align=align, audit=audit)


def test_the_demo_trains_reports_round_0_at_once_and_audits_both_models(tmp_path, spied_loop):  # noqa: F811
    said = []
    summary = demo_job(tmp_path, _tiny(), progress=False, say=said.append)
    assert len(said) == 3 and said[0].startswith("round 0: harmful refusal")  # one line per round, as it ends
    assert "with the 1 found direction(s) ablated" in said[0] and ("FAIL-OPEN" in said[0] or "survives" in said[0])
    assert summary["rounds_completed"] == 2 and summary["stop_reason"] is None
    sft, closed = summary["columns"]["sft"], summary["columns"]["failclosed"]
    assert (sft["n_directions"], closed["n_directions"]) == (1, 3)  # round 0's direction; all three at the end
    for column in (sft, closed):
        assert set(column["rates"]) >= {"refusal_harmful", "refusal_harmless", "refusal_borderline",
                                        "refusal_harmful_all_ablated"}
        assert all(rate["n"] == 3 for rate in column["rates"].values())
    for name in ("sft", "failclosed"):
        audit = json.loads((tmp_path / "audit" / name / "audit.json").read_text())
        assert audit["verdict_label"] == summary["columns"][name]["verdict_label"]
        assert audit["adapter"].endswith({"sft": "round_0/adapter", "failclosed": "final/adapter"}[name])
        assert (tmp_path / "audit" / name / "report.html").is_file()
    # the digests tie the summary to the very adapters, e.g. for attacks made on them later (`failclosed evaluate`)
    assert summary["adapter_digests"] == {"sft": adapter_digest(tmp_path / "align" / "round_0" / "adapter"),
                                          "failclosed": adapter_digest(tmp_path / "align" / "final" / "adapter")}
    assert summary["adapter_digests"]["sft"] != summary["adapter_digests"]["failclosed"]
    assert (tmp_path / "align" / "round_0" / "metrics.json").is_file()
    assert (tmp_path / "figures" / "refusal_rates.html").is_file()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert DemoConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == _tiny()
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]  # each round's metrics.json, with its timings
    assert all(set(r["timings_s"]) == {"train", "direction", "checks"} for r in summary["rounds"])
    assert summary["machine"]["cpus"] >= 1


def test_the_results_page_shows_a_committed_demo_summary(tmp_path, spied_loop):  # noqa: F811
    from failclosed_interp.reproduce.page import render_results

    summary = demo_job(tmp_path / "run", _tiny(rounds=1), progress=False, say=lambda _: None)
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "seed_0.json").write_text(json.dumps(summary))
    page = render_results(tmp_path / "results")
    section = page.split("## The main job")[1].split("\n## ")[0]
    assert "judged answers" in section
    assert format_summary(summary) in section and "torch threads" in section
    assert section.count("\n| 0 |") == 1 and section.count("\n| 1 |") == 1  # one row per round
    assert "Seed(s) 0: not run with the current demo settings" in section  # a tiny model's, not `make demo`'s
    current = dict(summary, config=DemoConfig(seed=0).to_dict())
    (tmp_path / "results" / "demo" / "seed_0.json").write_text(json.dumps(current))
    assert "not run with the current demo settings" not in render_results(tmp_path / "results")
    (tmp_path / "results" / "demo" / "seed_0.json").write_text(json.dumps(summary))
    seeds = page.split("## The main job across training seeds")[1].split("\n## ")[0]
    assert "Not measured yet" in seeds and "--seed S" in seeds  # one seed is not a spread

    other = json.loads(json.dumps(summary))
    other["columns"]["failclosed"]["rates"]["refusal_harmful"]["value"] = 0.5
    other["columns"]["failclosed"]["independent_pathways"] = 4
    (tmp_path / "results" / "demo" / "seed_7.json").write_text(json.dumps(other))
    page = render_results(tmp_path / "results")
    assert page.split("## The main job")[1].split("\n## ")[0] == section  # the lowest seed stays the main job
    seeds = page.split("## The main job across training seeds")[1].split("\n## ")[0]
    closed = seeds.split("### fail-closed")[1]
    first = summary["columns"]["failclosed"]
    row = next(line for line in closed.splitlines() if line.startswith("| harmful refusal |"))
    value = first["rates"]["refusal_harmful"]["value"]
    mean, sd = (value + 0.5) / 2, abs(value - 0.5) / 2 ** 0.5
    assert row.endswith(f"| {mean:.2f} ± {sd:.2f} |") and "seed 0 | seed 7" in seeds
    pathways = next(line for line in closed.splitlines() if line.startswith("| audit: independent pathways |"))
    assert f"| {first['independent_pathways']} | 4 |" in pathways
    assert "summaries from before the attacker tried both" not in seeds
    older = json.loads(json.dumps(other))  # a summary written before the attacker tried both ablations
    for column in older["columns"].values():
        del column["attack_template_prefix"]
    (tmp_path / "results" / "demo" / "seed_8.json").write_text(json.dumps(older))
    seeds = render_results(tmp_path / "results").split("## The main job across training seeds")[1].split("\n## ")[0]
    assert "Seed(s) 8: summaries from before the attacker tried both ablations" in seeds
    assert "| left alone (only way tried) |" in seeds
    assert "Seed(s) 0, 7, 8: not run with the current demo settings" in seeds  # a tiny model's settings


def test_a_summary_says_whether_it_ran_the_current_demo_settings():
    assert ran_current_settings({"seed": 1, "config": DemoConfig(seed=1).to_dict()})
    assert not ran_current_settings({"seed": 1, "config": DemoConfig(seed=1, n_eval=10).to_dict()})
    assert not ran_current_settings({"seed": 2, "config": DemoConfig(seed=1).to_dict()})
    assert not ran_current_settings({"seed": 1})  # written before summaries recorded their settings


def test_a_finished_demo_resumes_without_training_again(tmp_path, spied_loop):  # noqa: F811
    first = demo_job(tmp_path, _tiny(rounds=1), progress=False, say=lambda _: None)
    trained = (tmp_path / "align" / "final" / "adapter" / "adapter_model.safetensors").read_bytes()
    said = []
    again = demo_job(tmp_path, _tiny(rounds=1), progress=False, say=said.append)
    assert said == []  # no round ran again
    assert (tmp_path / "align" / "final" / "adapter" / "adapter_model.safetensors").read_bytes() == trained
    assert again["columns"] == first["columns"]


def test_model_n_eval_and_seed_reach_both_the_loop_and_the_audits():
    align, audit = DemoConfig(model="tiny-llama", n_eval=7, seed=3).resolved()
    assert (align.model, align.n_eval, align.sft.seed, align.sft.train.seed) == ("tiny-llama", 7, 3, 3)
    assert (audit.n_eval, audit.n_harmless, audit.seed) == (7, 7, 3)
    with pytest.raises(ValueError, match="n_eval must be >= 2"):
        DemoConfig(n_eval=1)


def test_the_demo_recipe_is_the_default_recipe_at_a_cpu_budget():
    demo, default = demo_recipe(), recipe("default")
    same = ("method", "mode", "search", "min_new_component", "skip_template_prefix", "min_ablation_drop",
            "min_addition_rise", "initial_fallback")
    assert all(getattr(demo, name) == getattr(default, name) for name in same)
    assert demo.round_checks == "logit" and demo.attacker is None  # the demo's audits attack both models instead
    assert demo_audit().adaptive and demo_audit().measure.mode == "logit"


def _column(label: str, **rates) -> dict:
    keys = ("refusal_harmful", "refusal_harmless", "refusal_borderline", "refusal_harmful_all_ablated",
            "refusal_harmful_adaptive_ablated", "compliance_harmful_adaptive_ablated")
    return {"rates": {key: rates.get(key, RATE) for key in keys}, "perplexity_harmless": 3.2, "n_directions": 1,
            "direction_layers": [12], "attack_kl_budget": 0.1, "verdict_label": label, "verdict": f"{label}: because",
            "independent_pathways": 0}


def test_the_table_shows_both_models_every_rate_with_its_interval_and_the_verdicts():
    columns = {"sft": _column("fail-open"), "failclosed": _column("fail-closed")}
    text = format_summary({"columns": columns, "stop_reason": None, "rounds_completed": 2,
                           "contrast": contrast(columns), "seconds_total": 12.0})
    assert text.count("0.50 [0.25, 0.75]") == 12  # six rates, two models
    assert "SFT (round 0)" in text and "fail-closed" in text and "n = 20 held-out prompts" in text
    assert "SFT (round 0): fail-open: because" in text and "attacker's KL budget 0.1" in text
    assert "the paper's contrast: the SFT model is fail-open, the fail-closed model is fail-closed" in text
    missing = dict(columns, failclosed={**_column("fail-open"), "rates": {"refusal_harmful": RATE}})
    text = format_summary({"columns": missing, "stop_reason": "no new direction", "rounds_completed": 0,
                           "contrast": contrast(missing), "seconds_total": 1.0})
    assert "not the paper's contrast" in text and "stopped after round 0: no new direction" in text
    assert "the fail-closed column is the round-0 model" in text


def test_the_table_says_how_the_attacker_ablated_each_models_direction():
    columns = {"sft": {**_column("fail-open"), "attack_template_prefix": "left alone"},
               "failclosed": {**_column("fail-closed"), "attack_template_prefix": "ablated"}}
    summary = {"columns": columns, "stop_reason": None, "rounds_completed": 1, "contrast": contrast(columns),
               "seconds_total": 1.0, "own_ablation": "every position"}
    assert ("the attacker tries both and keeps the stronger (SFT (round 0): prefix left alone; fail-closed: prefix "
            "ablated)") in format_summary(summary)
    older = {n: {k: v for k, v in c.items() if k != "attack_template_prefix"} for n, c in columns.items()}
    assert "prefix alone, as does the attacker" in format_summary({**summary, "columns": older})


def test_the_round_line_names_the_prompts_it_was_checked_on():
    metrics = {"round_checks": "logit", "refusal_harmful": 0.9, "refusal_harmless": 0.05, "n_directions": 0}
    assert "validation prompts" in format_round(1, {**metrics, "checked_on": "val"})
    assert "held-out test prompts" in format_round(1, metrics)  # summaries written before the rounds used val


def test_the_round_line_says_fail_open_only_when_ablation_collapses_refusal():
    metrics = {"round_checks": "logit", "refusal_harmful": 0.9, "refusal_harmless": 0.05, "n_directions": 1,
               "refusal_harmful_all_ablated": 0.1, "stop_reason": None}
    assert "FAIL-OPEN" in format_round(0, metrics) and "first answer token" in format_round(0, metrics)
    assert "survives" in format_round(0, {**metrics, "refusal_harmful_all_ablated": 0.8})
    assert "FAIL-OPEN" not in format_round(1, metrics)
    assert "the loop stops here: why" in format_round(0, {**metrics, "stop_reason": "why"})


def test_cli_demo_prints_the_table(tmp_path, spied_loop, monkeypatch, capsys):  # noqa: F811
    import failclosed_interp.demo as demo_module

    monkeypatch.setattr(demo_module, "DemoConfig", lambda **kw: dataclasses.replace(_tiny(rounds=1), **kw))
    assert main(["demo", "--out", str(tmp_path), "--model", "tiny-llama", "--n-eval", "3"]) == 0
    out = capsys.readouterr().out
    assert "round 0: harmful refusal" in out and "audit verdict" in out and "align/final/adapter" in out
