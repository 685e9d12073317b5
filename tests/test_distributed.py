"""Data-parallel LoRA training under a multi-process launcher: `torchrun` (what `accelerate launch`
runs) with two CPU processes (Gloo) must train the same adapter as one process, and write each file once."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from failclosed_interp.artifacts import write_json
from failclosed_interp.cli import main
from failclosed_interp.distributed import DataParallel

SFT_ARGS = ["--model", "tiny-llama", "--n-harmful", "6", "--n-harmless", "6", "--n-borderline", "2", "--epochs", "2"]


def test_shards_cover_the_batch_once_and_tolerate_small_batches():
    batch = [7, 3, 9, 1, 4]
    shards = [DataParallel(rank, 2).shard(batch) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(batch) and not set(shards[0]) & set(shards[1])
    assert DataParallel(2, 3).shard([5]) == []  # a rank can get nothing; it still joins the gradient sum
    assert DataParallel().shard(batch) == batch and not DataParallel().active


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    write_json(tmp_path / "x.json", {"a": 1})
    monkeypatch.setenv("RANK", "0")
    write_json(tmp_path / "y.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.json"]


def test_two_process_launch_trains_the_same_adapter_as_one_process(tmp_path):
    assert main(["sft", *SFT_ARGS, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "failclosed_interp.cli", "sft", *SFT_ARGS, "--out", str(tmp_path / "two")]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("adapter written to") == 1  # only rank 0 prints the result

    one, two = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("one", "two"))
    assert one.keys() == two.keys()
    moved = max(float(w.abs().max()) for name, w in one.items() if "lora_B" in name)
    assert moved > 1e-3  # training changed the adapter, so the comparison below means something
    for name in one:
        assert float((one[name] - two[name]).abs().max()) < 1e-5, name
    losses = [json.loads((tmp_path / run / "training.json").read_text())["losses"] for run in ("one", "two")]
    for a, b in zip(*losses):
        assert a["total"] == pytest.approx(b["total"], abs=1e-5)
    assert not [p for p in (tmp_path / "two").rglob("*.tmp")]  # no half-written leftovers from rank 1
