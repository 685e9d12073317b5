"""The evaluation job on tiny offline models: it writes results.json, responses.json, table.md and the figure;
its figures agree with the per-prompt records; a second run resumes from the cache without loading a model;
a deleted cache entry is recomputed alone; bad input fails clearly; the CLI runs it with adapters."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from failclosed_interp.adapters import adapter_digest
from failclosed_interp.attacks import GCG, AttackResult, GCGConfig, HumanTemplates, Template
from failclosed_interp.cli import main
from failclosed_interp.evaluate import EvalConfig, ModelSpec, evaluate
from failclosed_interp.judges import PrefixJudge
from failclosed_interp.models import load_model
from tests._public_data import write_public_data

TEMPLATES = (Template("Story: {prompt}", "story"), Template("Now: {prompt}", "now"))
JUDGE = PrefixJudge(prefixes=("2", "M"), name="tiny")  # tiny Llama seed 0 opens with these, seed 1 does not


@dataclass
class Recording:
    """A real Attack that delegates to another and records which prompts it was asked to attack."""

    inner: object
    asked: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    def settings(self) -> dict:
        return self.inner.settings()

    def run(self, model, prompts, **kwargs) -> list[AttackResult]:
        self.asked.append(list(prompts))
        return self.inner.run(model, prompts, **kwargs)


@dataclass
class CountingLoader:
    loads: list = field(default_factory=list)
    forwards: list = field(default_factory=lambda: [0])

    def __call__(self, spec: ModelSpec):
        self.loads.append(spec.label)
        model = load_model(spec.model, seed=1 if spec.label == "other" else 0)
        model.hf_model.register_forward_hook(lambda *_: self.forwards.__setitem__(0, self.forwards[0] + 1))
        return model


CONFIG = EvalConfig(n_harmful=3, n_compliance=2)
SPECS = [ModelSpec("base", "tiny-llama"), ModelSpec("other", "tiny-llama")]


def attacks():
    return [Recording(GCG(GCGConfig(steps=2, search_width=8, top_k=4, suffix_init=" x x", backend="own"))),
            Recording(HumanTemplates(TEMPLATES))]


@pytest.fixture(autouse=True)
def no_png(monkeypatch):
    monkeypatch.setenv("FAILCLOSED_NO_PNG", "1")


def test_evaluate_writes_the_run_folder_and_resumes_from_the_cache(tmp_path):
    loader, first = CountingLoader(), attacks()
    results = evaluate(SPECS, tmp_path, CONFIG, attacks=first, judge=JUDGE, load=loader, progress=False)
    assert loader.loads == ["base", "other"] and loader.forwards[0] > 0
    assert [len(a.asked) for a in first] == [2, 2]  # one call per model, all prompts
    responses = json.loads((tmp_path / "responses.json").read_text())
    for label in ("base", "other"):
        row, records = results["models"][label], responses[label]
        for name in ("gcg", "human"):
            successes = [r["success"] for r in records[name]]
            assert len(successes) == 3 and row["asr"][name]["value"] == pytest.approx(sum(successes) / 3)
        assert row["average_asr"]["value"] == pytest.approx((row["asr"]["gcg"]["value"] + row["asr"]["human"]["value"]) / 2)
        for kind in ("borderline", "harmless"):
            refused = [r["refused"] for r in records[f"compliance_{kind}"]]
            assert row["compliance"][kind]["value"] == pytest.approx(1 - sum(refused) / 2)
        assert row["utility"]["perplexity"] > 1 and row["utility"]["n_answers"] == 40
    assert results["models"]["base"]["utility"] != results["models"]["other"]["utility"]  # two different models
    table = (tmp_path / "table.md").read_text()
    assert table.splitlines()[0].startswith("| model | ASR GCG | ASR Human | avg ASR (GCG, Human) | compliance")
    assert "| base |" in table and "| other |" in table
    assert (tmp_path / "figures" / "rates.html").is_file()

    again_loader, again = CountingLoader(), attacks()
    resumed = evaluate(SPECS, tmp_path, CONFIG, attacks=again, judge=JUDGE, load=again_loader, progress=False)
    assert again_loader.loads == [] and again_loader.forwards == [0] and [a.asked for a in again] == [[], []]
    assert all(not row["loaded_model"] for row in resumed["models"].values())
    assert {k: v["asr"] for k, v in resumed["models"].items()} == {k: v["asr"] for k, v in results["models"].items()}

    gcg_folder = next((tmp_path / "cache" / "other").glob("gcg-*"))
    victim = sorted(p for p in gcg_folder.glob("*.json") if p.name != "settings.json")[0]
    lost_prompt = json.loads(victim.read_text())["prompt"]
    victim.unlink()
    partial_loader, partial = CountingLoader(), attacks()
    redone = evaluate(SPECS, tmp_path, CONFIG, attacks=partial, judge=JUDGE, load=partial_loader, progress=False)
    assert partial_loader.loads == ["other"] and partial[0].asked == [[lost_prompt]] and partial[1].asked == []
    assert {k: v["asr"] for k, v in redone["models"].items()} == {k: v["asr"] for k, v in results["models"].items()}


def test_a_changed_budget_is_not_served_from_the_cache(tmp_path):
    evaluate(SPECS[:1], tmp_path, CONFIG, attacks=[HumanTemplates(TEMPLATES)], judge=JUDGE, load=CountingLoader(),
             progress=False)
    loader = CountingLoader()
    changed = [Recording(HumanTemplates(TEMPLATES[:1]))]
    evaluate(SPECS[:1], tmp_path, CONFIG, attacks=changed, judge=JUDGE, load=loader, progress=False)
    assert loader.loads == ["base"] and len(changed[0].asked[0]) == 3
    assert len(list((tmp_path / "cache" / "base").glob("human-*"))) == 2


def test_an_adapter_trained_again_in_the_same_folder_is_not_served_from_the_cache(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"first training")
    spec = ModelSpec("sft", "tiny-llama", str(adapter))  # the loader below ignores the adapter: the cache sees it
    run = lambda: evaluate([spec], tmp_path / "eval", CONFIG, attacks=[HumanTemplates(TEMPLATES)], judge=JUDGE,
                           load=CountingLoader(), progress=False)
    run()
    run()  # the same bytes: served from the cache
    (adapter / "adapter_model.safetensors").write_bytes(b"trained again")
    with pytest.raises(ValueError, match="holds results of"):
        run()


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="judge at least 64 new tokens"):
        EvalConfig(max_new_tokens=32)
    with pytest.raises(ValueError, match="each must be one of"):
        EvalConfig(attacks=("gcg", "telepathy"))
    with pytest.raises(ValueError, match="repeat"):
        evaluate([SPECS[0], SPECS[0]], tmp_path, CONFIG, progress=False)
    with pytest.raises(ValueError, match="plain name"):
        ModelSpec("a/b")
    assert ModelSpec.parse("sft=runs/sft/adapter") == ModelSpec("sft", adapter="runs/sft/adapter")
    assert ModelSpec.parse("runs/refat/adapter").label == "refat"
    assert ModelSpec.parse("runs/align-sft/final/adapter").label == "align-sft"
    with pytest.raises(ValueError, match="NAME=DIR"):
        ModelSpec.parse("sft=")
    evaluate(SPECS[:1], tmp_path, CONFIG, attacks=[HumanTemplates(TEMPLATES)], judge=JUDGE, load=CountingLoader(),
             progress=False)
    with pytest.raises(ValueError, match="holds results of"):
        evaluate([ModelSpec("base", "tiny-llama", adapter="elsewhere")], tmp_path, CONFIG,
                 attacks=[HumanTemplates(TEMPLATES)], judge=JUDGE, progress=False)


def test_cli_evaluates_base_and_adapter_rows(tmp_path, capsys):
    from failclosed_interp.adapters import LoraSettings, save_adapter

    lora = LoraSettings(r=2)
    save_adapter(load_model("tiny-llama", lora=lora), tmp_path / "sft" / "adapter", lora)
    templates = tmp_path / "templates.csv"
    templates.write_text('id,template\n0,"Story: [INSERT PROMPT HERE]"\n')
    out = tmp_path / "eval"
    args = ["evaluate", "--model", "tiny-llama", "--adapter", f"sft={tmp_path / 'sft' / 'adapter'}", "--attacks", "human",
            "--templates", str(templates), "--n-harmful", "2", "--n-compliance", "1", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["base", "sft"] and results["attacks"] == ["human"]
    assert results["n_harmful"] == 2 and results["max_new_tokens"] == 64
    assert "| sft |" in capsys.readouterr().out
    assert main([*args[:-2], "--max-new-tokens", "16", "--out", str(out)]) == 2
    assert "at least 64" in capsys.readouterr().err


def test_a_data_folder_adds_public_set_columns_measured_once(tmp_path):
    data = write_public_data(tmp_path / "data")
    none = [HumanTemplates(TEMPLATES[:1])]
    results = evaluate(SPECS[:1], tmp_path / "run", CONFIG, attacks=none, judge=JUDGE, load=CountingLoader(),
                       progress=False, data_dir=data)
    public = results["models"]["base"]["public"]
    assert set(public) == {"advbench", "malicious_instruct", "tdc2023", "xstest_safe"}
    assert all(column["n"] == 3 for column in public.values())  # the whole test half of 6 rows
    table = (tmp_path / "run" / "table.md").read_text()
    assert "refusal xstest_safe" in table and "over-refusal" in table
    loader = CountingLoader()
    again = evaluate(SPECS[:1], tmp_path / "run", CONFIG, attacks=none, judge=JUDGE, load=loader, progress=False,
                     data_dir=data)
    assert loader.loads == [] and again["models"]["base"]["public"] == public


def test_the_results_page_tables_the_attacks_on_a_demo_seeds_two_models(tmp_path):
    from failclosed_interp.reproduce.page import render_results

    specs = []
    for label in ("sft", "failclosed"):  # the loader below ignores the adapters: their digests tie results to a run
        (tmp_path / label).mkdir()
        (tmp_path / label / "adapter_model.safetensors").write_bytes(f"{label} weights".encode())
        specs.append(ModelSpec(label, "tiny-llama", str(tmp_path / label)))
    def load(spec: ModelSpec):  # the sft row does not open with the judge's refusal prefixes, the other does
        return load_model(spec.model, seed=1 if spec.label == "sft" else 0)

    results = evaluate(specs, tmp_path / "eval", CONFIG, attacks=attacks(), judge=JUDGE, load=load, progress=False)
    assert results["models"]["sft"]["asr"]["human"]["value"] > results["models"]["failclosed"]["asr"]["human"]["value"]
    section = render_results(tmp_path / "results").split("### The main job's models under the prompt attacks")[1]
    assert "Not measured yet" in section.split("\n## ")[0]
    (tmp_path / "results" / "demo" / "attacks").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "attacks" / "seed_4.json").write_text((tmp_path / "eval" / "results.json").read_text())
    section = render_results(tmp_path / "results").split("### The main job's models under the prompt attacks")[1].split("\n## ")[0]
    assert "training seed 4" in section and "3 harmful test prompts" in section
    assert "gcg: steps 2, search width 8; human: 2 templates" in section  # the attacks run, not the config's
    for label, name in (("SFT (round 0)", "sft"), ("fail-closed", "failclosed")):
        row = next(line for line in section.splitlines() if line.startswith(f"| {label}, seed 4 |"))
        asr = results["models"][name]["asr"]
        assert row.split(" | ")[1:3] == [f"{asr[a]['value']:.2f} [{asr[a]['ci_low']:.2f}, {asr[a]['ci_high']:.2f}]"
                                         for a in ("gcg", "human")]
    from failclosed_interp.demo import DemoConfig
    from failclosed_interp.reproduce.demo_sections import demo_attacks_section

    digests = {label: adapter_digest(tmp_path / label) for label in ("sft", "failclosed")}
    runs = {4: {"seed": 4, "config": DemoConfig(seed=4).to_dict(), "adapter_digests": digests}}  # the run attacked
    assert "not run with the current demo settings" not in "\n".join(demo_attacks_section(tmp_path / "results", runs))
    assert "not attacked on the models" not in "\n".join(demo_attacks_section(tmp_path / "results", runs))
    runs[4]["config"] = DemoConfig(seed=4, n_eval=5).to_dict()
    assert "Seed(s) 4: not run with the current demo settings" in "\n".join(demo_attacks_section(tmp_path / "results", runs))
    for other in ({**digests, "failclosed": "another run"}, {}):  # another run's models, or a run from before digests
        runs[4]["adapter_digests"] = other
        section = "\n".join(demo_attacks_section(tmp_path / "results", runs))
        assert "Seed(s) 4: not attacked on the models of" in section and "current demo settings" not in section
