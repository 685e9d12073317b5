"""`ScoreLog`: a long search's scores kept on disk read back exactly, only for the same context; `digest`
tells apart what the scores depend on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from failclosed_interp.adapters import LoraSettings, lora_parameters
from failclosed_interp.models import load_model
from failclosed_interp.score_log import ScoreLog, digest, index_logs, model_digest, shared_logs


@dataclass(frozen=True)
class Settings:
    batch_size: int
    vectors: torch.Tensor


def test_digest_sees_every_bit_of_a_tensor_and_the_contents_of_containers():
    t = torch.randn(4, 3)
    flipped = t.clone()
    flipped.view(torch.int32)[1, 2] ^= 1  # the lowest bit of one float
    assert digest(t) == digest(t.clone()) != digest(flipped)
    assert digest(t) != digest(t.double()) and digest(t) != digest(t.reshape(3, 4))
    assert digest(Settings(8, t)) == digest(Settings(8, t.clone())) != digest(Settings(16, t))
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1}) != digest({"a": 1, "b": [2, 1]})
    assert digest([1, 2]) != digest([[1, 2]]) and digest("1") != digest(1)


def test_a_log_reads_back_what_it_logged_exactly_and_only_for_its_own_context(tmp_path):
    path = tmp_path / "search_progress.json"
    values = {"sum": 0.1 + 0.2, "tiny": 5e-324, "nan": math.nan, "inf": -math.inf, "pair": [1 / 3, 2.5]}
    log = ScoreLog(path, "context A")
    for key, value in values.items():
        assert log.value(key, lambda v=value: v) is value
    assert log.resumed == 0 and len(log) == len(values)

    def never():
        raise AssertionError("a logged value was computed again")

    again = ScoreLog(path, "context A")
    assert again.resumed == len(values)
    got = {key: again.value(key, never) for key in values}
    assert got["sum"] == 0.1 + 0.2 and got["tiny"] == 5e-324 and math.isnan(got["nan"]) and got["inf"] == -math.inf
    assert got["pair"] == [1 / 3, 2.5]

    other = ScoreLog(path, "context B")  # another model or settings: nothing is read back, and it is replaced
    assert len(other) == 0 and other.value("sum", lambda: 1.0) == 1.0
    assert len(ScoreLog(path, "context A")) == 0 and len(ScoreLog(path, "context B")) == 1


def test_a_corrupt_log_is_computed_again_and_without_a_path_nothing_is_written(tmp_path):
    path = tmp_path / "search_progress.json"
    path.write_text('{"context": "A", "values": {"x": 1.0')  # cut off mid-write
    log = ScoreLog(path, "A")
    assert len(log) == 0 and log.value("x", lambda: 2.0) == 2.0 and ScoreLog(path, "A").value("x", lambda: 3.0) == 2.0
    memory = ScoreLog(None, "A")
    assert memory.value("y", lambda: 4.0) == 4.0 and memory.value("y", lambda: 5.0) == 4.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search_progress.json"]


def test_the_model_digest_changes_with_the_adapter_weights():
    model = load_model("tiny-llama", lora=LoraSettings(r=2, alpha=4))
    before = model_digest(model)
    assert model_digest(model) == before
    with torch.no_grad():
        lora_parameters(model.hf_model)[0].view(-1)[0] += 1e-3
    assert model_digest(model) != before
    assert model_digest(load_model("tiny-llama")) != before


def test_an_object_without_json_form_digests_by_its_repr_so_a_log_for_it_never_resumes_another_objects():
    judge = object()
    assert digest(judge) == digest(judge) and digest(judge) != digest(object())


def test_inside_shared_logs_a_search_starts_from_the_log_of_the_same_search_made_elsewhere(tmp_path):
    shared = tmp_path / "shared"
    with shared_logs(shared):
        ScoreLog(tmp_path / "run_a" / "search_progress.json", "same search").value("kl", lambda: 0.25)
        other = ScoreLog(tmp_path / "run_b" / "search_progress.json", "same search")
        assert other.resumed == 1 and other.value("kl", lambda: 9.0) == 0.25
        assert len(ScoreLog(tmp_path / "run_c" / "search_progress.json", "another search")) == 0
    alone = ScoreLog(tmp_path / "run_d" / "search_progress.json", "same search")  # outside the block: its own log only
    assert len(alone) == 0


def test_index_logs_files_earlier_runs_logs_by_their_context_so_a_later_search_finds_them(tmp_path):
    ScoreLog(tmp_path / "runs" / "run_a" / "round_0" / "search" / "search_progress.json", "round-0 search").value("x", lambda: 1.5)
    (tmp_path / "runs" / "run_b").mkdir()
    (tmp_path / "runs" / "run_b" / "search_progress.json").write_text("not json")  # unreadable: skipped
    shared = tmp_path / "runs" / "score_logs"
    assert index_logs(tmp_path / "runs", shared) == 1 and index_logs(tmp_path / "runs", shared) == 0  # filed once
    with shared_logs(shared):
        assert ScoreLog(tmp_path / "runs" / "run_c" / "search_progress.json", "round-0 search").value("x", lambda: 0.0) == 1.5


def test_a_log_that_grows_by_a_value_changes_by_one_line_so_its_kept_history_stays_small(tmp_path):
    path = tmp_path / "search_progress.json"
    log = ScoreLog(path, "context A")
    for step in range(3):
        log.value(f"step {step}", lambda s=step: [float(s)] * 50)
    before = path.read_text().splitlines()
    log.value("step 3", lambda: [3.0] * 50)
    after = path.read_text().splitlines()
    changed = [line for line in after if line not in before]
    assert len(after) == len(before) + 1
    assert len(changed) == 2 and changed[1].startswith('"step 3": ')  # the new value, and a comma on the line before
    assert ScoreLog(path, "context A").resumed == 4
