"""The mechanistic figures from a results folder: audits of the toy models with 1 and 3 planted pathways
stand in for the sft and fail-closed models, attack and training results carry planted rates; every figure
shows exactly the numbers in the files, and names what it leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from failclosed_interp.audit import AuditConfig, MeasureConfig, audit_model
from failclosed_interp.reproduce import GridConfig, build_grid
from failclosed_interp.reproduce.figures import (
    describe_figures,
    figures_html,
    mechanistic_figures,
    save_grid_figures,
)
from failclosed_interp.reproduce.results import load_results, of_kind, unfinished
from failclosed_interp.reproduce.records import GRID_FILE, SCHEMA


def rate(value: float, n: int = 10) -> dict:
    return {"value": value, "ci_low": max(0.0, value - 0.1), "ci_high": min(1.0, value + 0.1), "n": n, "interval": "wilson"}


def write_result(folder: Path, name: str, result: dict, fingerprint: str = "planted") -> None:
    kind, recipe, seed = name.split("-")
    experiment = {"name": name, "kind": kind, "recipe": recipe, "seed": int(seed[1:]), "model_of": None,
                  "fingerprint": fingerprint}
    (folder / f"{name}.json").write_text(json.dumps({"schema": SCHEMA, "experiment": experiment, "config": {},
                                                     "result": result, "wall_s": 1.0, "machine": {}}))


def adaptive(refusals: list[float], layers: list[int | None]) -> dict:
    budgets = [{"kl_budget": b, "direction": {"layer": layer}, "refusal": rate(r), "compliance": rate(1 - r),
                "non_answer": 0} for b, r, layer in zip((0.1, 1.0, "inf"), refusals, layers)]
    return {"adaptive_attack": {"budgets": budgets}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("grid")
    config = AuditConfig(k_max=3, n_eval=8, n_harmless=8, measure=MeasureConfig(mode="logit"))
    write_result(folder, "audit-sft-s0", audit_model("toy-fail-open", config=config).to_dict())
    write_result(folder, "audit-project-s0", audit_model("toy-fail-closed", config=config).to_dict())
    write_result(folder, "audit-paper-s0", {"directions": [], "single_ablation_refusal": [],
                                            "verdict": "no refusal to audit: harmful refusal is 0.00; teach it first"})
    write_result(folder, "attacks-sft-s0", {"asr": {"gcg": rate(0.4), "pair": rate(0.2)}, "average_asr": rate(0.3)})
    write_result(folder, "attacks-project-s0", {"asr": {"gcg": rate(0.1), "pair": rate(0.0)}, "average_asr": rate(0.05)})
    write_result(folder, "align-sft-s0", adaptive([0.6, 0.1, 0.0], [3, 19, 24]))
    write_result(folder, "align-project-s0", adaptive([0.9, 0.9, 0.8], [None, 17, 25]))
    return folder


def test_a_demo_run_folder_reads_as_its_two_audits(folder, tmp_path):
    """`failclosed demo` writes audit/{sft,failclosed}/audit.json: the figures draw them as `sft` and
    `fail-closed demo`, with the fail-closed audit's adaptive attack as its budget curve."""
    audits = {r["experiment"]["recipe"]: r["result"] for r in of_kind(load_results(folder), "audit")}
    demo = tmp_path / "demo"
    (demo / "audit").mkdir(parents=True)
    (demo / "summary.json").write_text(json.dumps({"model": "toy"}))
    with pytest.raises(FileNotFoundError, match="no demo audit yet"):
        load_results(demo)
    closed = {**audits["project"], **adaptive([0.9, 0.9, 0.8], [None, 17, 25])}
    for name, audit in (("sft", audits["sft"]), ("failclosed", closed)):
        (demo / "audit" / name).mkdir()
        (demo / "audit" / name / "audit.json").write_text(json.dumps(audit))
    results = load_results(demo)
    assert sorted(results) == ["align-failclosed-s0", "audit-failclosed-s0", "audit-sft-s0"]
    drawn = {f.id: f for f in mechanistic_figures(results)}
    assert drawn["joint"].models == drawn["single"].models == ("sft s0", "fail-closed demo s0")
    curves = {t.name: list(t.y) for t in drawn["joint"].figure.data}
    assert curves["fail-closed demo s0"] == [d["value"] for d in audits["project"]["joint_ablation_curve"]["found"]]
    assert drawn["adaptive"].models == ("fail-closed demo s0",) and drawn["attacks"].figure is None
    # `failclosed evaluate --out DEMO/attacks` with the demo's models as rows: the attack figure draws it
    (demo / "attacks").mkdir()
    attacked = {"models": {"sft": {"asr": {"gcg": rate(0.4)}, "average_asr": rate(0.4)},
                           "failclosed": {"asr": {"gcg": rate(0.1)}, "average_asr": rate(0.1)}}, "judge": "three-way"}
    (demo / "attacks" / "results.json").write_text(json.dumps(attacked))
    drawn = {f.id: f for f in mechanistic_figures(load_results(demo))}
    assert drawn["attacks"].models == ("sft s0", "fail-closed demo s0")
    bars = {t.name: list(t.y) for t in drawn["attacks"].figure.data}
    assert bars == {"sft s0": [0.4, 0.4], "fail-closed demo s0": [0.1, 0.1]}  # gcg and the average


@pytest.fixture(scope="module")
def figs(folder) -> dict:
    return {f.id: f for f in mechanistic_figures(load_results(folder))}


def test_the_joint_curves_are_the_audits_and_separate_fail_open_from_fail_closed(folder, figs):
    joint = figs["joint"]
    assert joint.models == ("sft s0", "project s0")
    curves = {t.name: list(t.y) for t in joint.figure.data}
    audits = {r["experiment"]["recipe"]: r["result"] for r in of_kind(load_results(folder), "audit")}
    assert curves["project s0"] == [d["value"] for d in audits["project"]["joint_ablation_curve"]["found"]]
    assert curves["sft s0"][:2] == [1.0, 0.0]  # one pathway: the first ablation collapses refusal
    assert curves["project s0"] == [1.0, 1.0, 1.0, 0.0]  # three: only all of them together
    assert "audit-paper-s0: no refusal to audit: harmful refusal is 0.00" in joint.notes


def test_single_ablation_and_steering_bars_per_direction(figs):
    single = {t.name.split(" (")[0]: dict(zip(t.x, t.y)) for t in figs["single"].figure.data}
    assert single == {"sft s0": {"nothing": 1.0, "d0": 0.0}, "project s0": {"nothing": 1.0, "d0": 1.0, "d1": 1.0, "d2": 1.0}}
    assert "layers 1, 1, 1" in figs["single"].figure.data[1].name  # the toy's pathways all live at layer 1
    steering = {t.name.split(" (")[0]: dict(zip(t.x, t.y)) for t in figs["steering"].figure.data}
    assert steering["project s0"] == {"nothing added": 0.0, "d0": 1.0, "d1": 1.0, "d2": 1.0}  # each one suffices


def test_cosine_matrices_only_where_there_is_a_pair(figs):
    cosine = figs["cosine"]
    assert cosine.models == ("project s0",)
    assert "audit of sft s0: one direction, no pair to compare" in cosine.notes
    z = cosine.figure.data[0].z
    assert all(abs(z[i][i] - 1) < 1e-6 for i in range(3))
    assert max(abs(z[i][j]) for i in range(3) for j in range(3) if i != j) < 0.1  # planted pathways are orthogonal


def test_attack_success_and_the_adaptive_budget_curve(figs):
    asr = {t.name: dict(zip(t.x, t.y)) for t in figs["attacks"].figure.data}
    assert asr == {"sft s0": {"gcg": 0.4, "pair": 0.2, "average": 0.3},
                   "project s0": {"gcg": 0.1, "pair": 0.0, "average": 0.05}}
    fig = figs["adaptive"].figure
    assert list(fig.layout.xaxis.ticktext) == ["KL 0.1", "KL 1", "no limit"]
    assert {t.name: list(t.y) for t in fig.data} == {"sft s0": [0.6, 0.1, 0.0], "project s0": [0.9, 0.9, 0.8]}
    assert "project s0: no direction fits KL 0.1 (nothing ablated there)" in figs["adaptive"].notes


def test_html_text_and_files(figs, tmp_path):
    page = figures_html(list(figs.values()))
    assert page.count("<script type=\"text/javascript\">") == 1
    assert all(f'id="grid-section-{name}"' in page for name in figs)
    text = describe_figures(list(figs.values()))
    assert "joint: drawn for sft s0, project s0" in text
    written = save_grid_figures(list(figs.values()), tmp_path, png=False)
    assert sorted(p.name for p in written) == sorted(f"{name}.html" for name in figs)


def test_a_figure_with_nothing_to_draw_says_so_and_unfinished_experiments_are_named(tmp_path):
    config = GridConfig(quick=True, seeds=(0,), recipes=("sft",))
    (tmp_path / GRID_FILE).write_text(json.dumps({"schema": SCHEMA, "grid": {"quick": True, "seeds": [0],
                                                                             "attack_seeds": [0], "recipes": ["sft"]}}))
    align = next(e for e in build_grid(config) if e.kind == "align")
    write_result(tmp_path, "align-sft-s0", adaptive([0.5, 0.5, 0.5], [1, 1, 1]), fingerprint=align.fingerprint)
    results = load_results(tmp_path)
    assert unfinished(tmp_path, results) == ["validation-sft-s0", "audit-sft-s0", "public-sft-s0", "attacks-sft-s0"]
    figs = {f.id: f for f in mechanistic_figures(results, unfinished(tmp_path, results))}
    assert figs["joint"].figure is None and figs["joint"].notes == ("not finished yet: audit-sft-s0",)
    assert figs["attacks"].notes == ("not finished yet: attacks-sft-s0",)
    assert figs["adaptive"].figure is not None and figs["adaptive"].notes == ()
    assert "joint: nothing to draw yet" in describe_figures(list(figs.values()))
    assert "Nothing to draw yet." in figures_html(list(figs.values()))


def test_a_missing_folder_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="failclosed reproduce --results"):
        load_results(tmp_path / "nowhere")


def test_figures_kept_in_git_load_plotly_from_its_cdn_and_others_open_offline(tmp_path):
    from failclosed_interp.plots import grouped_rate_bars, save_figure
    from failclosed_interp.stats import wilson_rate

    fig = grouped_rate_bars({"model": {"harmful": wilson_rate([1] * 9 + [0])}}, title="t")
    offline = save_figure(fig, tmp_path / "offline", png=False)[0].read_text()
    online = save_figure(fig, tmp_path / "online", png=False, self_contained=False)[0].read_text()
    assert 'src="https://cdn.plot.ly' in online and len(online) < 50_000
    assert 'src="https://cdn.plot.ly' not in offline and len(offline) > 1_000_000  # plotly.js inside


def test_the_same_figure_writes_the_same_file(tmp_path):
    from failclosed_interp.plots import grouped_rate_bars, save_figure
    from failclosed_interp.stats import wilson_rate

    def write(folder):
        fig = grouped_rate_bars({"model": {"harmful": wilson_rate([1] * 9 + [0])}}, title="t")
        return save_figure(fig, tmp_path / folder / "figure", png=False, self_contained=False)[0].read_text()

    assert write("a") == write("b")  # pages kept in git change only when their figures do
