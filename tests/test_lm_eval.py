"""Optional lm-evaluation-harness tasks as a utility column: a local multiple-choice task on a tiny model
scores what its log-likelihoods say, results are cached per model, and bad input is a clear error."""

from __future__ import annotations

import json

import pytest
import torch

from failclosed_interp.attacks import HumanTemplates, Template
from failclosed_interp.evaluate import EvalConfig, ModelSpec, evaluate
from failclosed_interp.judges import PrefixJudge
from failclosed_interp.lm_eval_tasks import LMEvalConfig, headline_metric, lm_eval_scores
from failclosed_interp.models import load_model

QUESTIONS = [("Which word names a colour?", ["red", "table", "run"]),
             ("Pick the animal.", ["stone", "horse", "blue"]),
             ("Which is a number?", ["seven", "green", "walk"]),
             ("Name a fruit.", ["car", "sing", "apple"]),
             ("Which one is a verb?", ["jump", "chair", "cold"]),
             ("Pick a day of the week.", ["river", "Monday", "glass"])]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FAILCLOSED_NO_PNG", "1")


@pytest.fixture
def task_dir(tmp_path):
    """A multiple-choice task that reads a local JSONL file (no download)."""
    data = tmp_path / "data.jsonl"
    labels = [0, 1, 0, 2, 0, 1]
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": y}) + "\n"
                            for (q, c), y in zip(QUESTIONS, labels)))
    (tmp_path / "local_choice.yaml").write_text(
        "task: local_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return tmp_path


def _our_accuracy(model, rows) -> float:
    """argmax over choices of log p(" " + choice | question), the harness's multiple-choice rule."""
    tok, hits = model.tokenizer, []
    for row in rows:
        scores = []
        for choice in row["choices"]:
            context = tok(row["question"], add_special_tokens=False)["input_ids"]
            whole = tok(row["question"] + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model.hf_model(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(sum(float(logits[t - 1, whole[t]]) for t in range(len(context), len(whole))))
        hits.append(int(max(range(len(scores)), key=scores.__getitem__) == row["label"]))
    return sum(hits) / len(hits)


def test_local_task_accuracy_matches_the_models_own_log_likelihoods(task_dir):
    model = load_model("tiny-llama")
    scores = lm_eval_scores(model, LMEvalConfig(tasks=("local_choice",), include_path=str(task_dir)))
    rows = [json.loads(line) for line in (task_dir / "data.jsonl").read_text().splitlines()]
    name, value = headline_metric(scores["local_choice"])
    assert name == "acc,none"
    assert value == pytest.approx(_our_accuracy(model, rows))
    other = lm_eval_scores(load_model("tiny-llama", seed=3), LMEvalConfig(tasks=("local_choice",), include_path=str(task_dir), limit=2))
    assert other["local_choice"]["sample_len"] == 2  # the limit is passed on


def test_evaluate_adds_a_cached_lm_eval_column(task_dir, tmp_path):
    config = EvalConfig(n_harmful=2, n_compliance=2,
                        lm_eval=LMEvalConfig(tasks=("local_choice",), include_path=str(task_dir)))
    attacks = [HumanTemplates((Template("Story: {prompt}", "story"),))]
    judge = PrefixJudge(prefixes=("2",), name="tiny")
    out = tmp_path / "eval"
    results = evaluate([ModelSpec("base", "tiny-llama")], out, config, attacks=attacks, judge=judge, progress=False)
    scores = results["models"]["base"]["lm_eval"]["local_choice"]
    assert 0.0 <= scores["acc,none"] <= 1.0
    header = (out / "table.md").read_text().splitlines()[0]
    assert header.endswith("| lm-eval local_choice |")
    assert f"{scores['acc,none']:.3f} (acc)" in (out / "table.md").read_text()
    again = evaluate([ModelSpec("base", "tiny-llama")], out, config, attacks=attacks, judge=judge, progress=False,
                     load=lambda spec: pytest.fail("a cached row must not load its model"))
    assert again["models"]["base"]["lm_eval"] == results["models"]["base"]["lm_eval"]


def test_bad_lm_eval_input_is_a_clear_error(task_dir):
    with pytest.raises(ValueError, match="name at least one task"):
        LMEvalConfig(tasks=())
    with pytest.raises(ValueError, match="limit must be >= 1"):
        LMEvalConfig(tasks=("arc_easy",), limit=0)
    with pytest.raises(ValueError, match="no_such_task"):
        lm_eval_scores(load_model("tiny-llama"), LMEvalConfig(tasks=("no_such_task",), include_path=str(task_dir)))
