"""What running on a GPU needs, checked on CPU: batch sizes that halve on out-of-memory (with a fake
OOM) and give the same results, gradient checkpointing through the hooks, --device/--dtype on every
command, and the GPU benchmark's tiny CPU mode."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import failclosed_interp.activations as activations_module
import failclosed_interp.generation as generation_module
import failclosed_interp.training.trainer as trainer_module
from conftest import PROMPTS
from failclosed_interp.activations import mean_activations
from failclosed_interp.adapters import LoraSettings, lora_parameters
from failclosed_interp.batching import AdaptiveBatchSize
from failclosed_interp.cli import build_parser
from failclosed_interp.generation import GenerationConfig, generate_tokens
from failclosed_interp.interventions import Ablation, hook_name
from failclosed_interp.models import load_defaults, load_model
from failclosed_interp.training import Example, TrainConfig, train_lora

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _oom_above(fn, limit: int, rows_of):
    """`fn` that runs, then raises a CUDA-style OOM when its batch has more than `limit` rows, so a
    failed call has already done part of its work (as a real OOM midway through would)."""

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        if rows_of(*args, **kwargs) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return out

    return wrapped


def test_adaptive_batch_size_halves_on_oom_only():
    sizes = []

    def fn(size):
        sizes.append(size)
        if size > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return size

    sizer = AdaptiveBatchSize(16)
    assert sizer.run(fn) == 2 and sizes == [16, 8, 4, 2] and sizer.size == 2
    assert sizer.run(fn) == 2 and sizes[-1] == 2  # the smaller size is kept
    with pytest.raises(ValueError, match="not memory"):
        AdaptiveBatchSize(4).run(lambda size: (_ for _ in ()).throw(ValueError("not memory")))
    with pytest.raises(RuntimeError, match="size of 1.*bfloat16"):
        AdaptiveBatchSize(2, "generation batch").run(lambda size: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    with pytest.raises(ValueError, match=">= 1"):
        AdaptiveBatchSize(0)


def test_generation_retries_with_smaller_batches_and_gives_the_same_tokens(tiny_llama, unit_direction, monkeypatch):
    config = GenerationConfig(max_new_tokens=6, batch_size=8)
    ablate = [Ablation(unit_direction)]
    expected = generate_tokens(tiny_llama, PROMPTS, config, ablate, progress=False)
    monkeypatch.setattr(generation_module, "_decode",
                        _oom_above(generation_module._decode, 1, lambda model, ids, *rest: ids.shape[0]))
    assert generate_tokens(tiny_llama, PROMPTS, config, ablate, progress=False) == expected


def test_activation_sweep_retries_from_scratch_after_oom(tiny_llama, monkeypatch):
    expected = mean_activations(tiny_llama, PROMPTS, positions=(-1, -2), batch_size=8)
    monkeypatch.setattr(activations_module, "forward_without_logits",
                        _oom_above(activations_module.forward_without_logits, 1, lambda model, batch: batch.input_ids.shape[0]))
    got = mean_activations(tiny_llama, PROMPTS, positions=(-1, -2), batch_size=8)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # the failed pass left nothing behind


def _train(config, examples, interventions=()):
    torch.manual_seed(0)
    model = load_model("tiny-llama", lora=config.lora)
    train_lora(model, examples, config, safety_interventions=interventions, progress=False)
    return [p.detach().clone() for p in lora_parameters(model.hf_model)]


EXAMPLES = [Example(p, "I'm sorry.", "safety") for p in ("Pick a lock.", "Write a threat.", "Steal a car.", "Hurt him.")] + \
           [Example(p, "Sure, here.", "utility") for p in ("Name a colour.", "Say hi.", "Count to 3.", "A joke?")]
CONFIG = TrainConfig(epochs=1, batch_size=4, lr=1e-2, lora=LoraSettings(r=2, alpha=4))


def test_training_micro_batches_after_oom_learn_what_the_whole_batch_learns(unit_direction, monkeypatch):
    ablate = [Ablation(unit_direction)]
    expected = _train(CONFIG, EXAMPLES, ablate)
    monkeypatch.setattr(trainer_module, "answer_logits",
                        _oom_above(trainer_module.answer_logits, 1, lambda model, batch: batch.input_ids.shape[0]))
    got = _train(CONFIG, EXAMPLES, ablate)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_recomputes_through_the_hooks_with_the_same_result(unit_direction, monkeypatch):
    calls = []
    site = hook_name(1, "attn_out")  # inside the decoder layer, which is what checkpointing recomputes

    class Counting(Ablation):
        def hooks(self, model):
            return [*super().hooks(model), (site, lambda x, hook=None: calls.append(1) or x)]

    ablate = [Counting(unit_direction, skip_template_prefix=False)]
    plain = _train(CONFIG, EXAMPLES[:4], ablate)
    n_plain = len(calls)
    checkpointed = _train(dataclasses.replace(CONFIG, gradient_checkpointing=True), EXAMPLES[:4], ablate)
    assert len(calls) - n_plain == 2 * n_plain  # every hooked forward ran again in backward
    for a, b in zip(checkpointed, plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        TrainConfig(gradient_checkpointing="yes")


def test_every_command_that_loads_a_model_takes_device_and_dtype():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        if name in ("judge", "judge-check"):  # they judge text with the offline three-way judge: no model
            continue
        options = {o for a in sub._actions for o in a.option_strings}
        assert {"--device", "--dtype"} <= options, name
        dtype = next(a for a in sub._actions if "--dtype" in a.option_strings)
        assert set(dtype.choices) == {"float32", "bfloat16", "float16"}


def test_load_defaults_set_the_dtype_of_every_load_inside_them():
    with load_defaults(None, "bfloat16"):
        assert load_model("tiny-llama3").dtype == torch.bfloat16
        assert load_model("tiny-llama", dtype=torch.float32).dtype == torch.float32  # an explicit dtype wins
    assert load_model("tiny-llama").dtype == torch.float32
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"), load_defaults(None, "int8"):
        pass


def test_gpu_benchmark_tiny_mode_runs_on_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT, env=ENV)
    assert out.returncode == 0, out.stderr
    for row in ("progressive LoRA step / HF+PEFT LoRA step", "hooked forward / plain forward",
                "generation under hooks / HF generate"):
        assert row in out.stdout


def test_gpu_benchmark_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=ENV)
    assert out.returncode != 0 and "needs a CUDA device" in out.stderr and "--tiny" in out.stderr
