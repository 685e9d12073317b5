"""Benchmarks that print ratios against a baseline measured in the same run.

    python benchmarks/run_benchmarks.py [--model smollm2-135m-instruct] [--repeats 5]

1. KV-cached vs uncached greedy generation, 32 new tokens (target >= 5x faster).
2. Forward with a one-direction ablation at every layer's block input, attention and MLP output
   vs a plain forward of the same bridge (target <= 1.15x).
3. One progressive training step (LoRA, a 3-direction subspace ablated at every layer's block input,
   attention and MLP output) vs one plain LoRA SFT step on the same batch (target <= 1.3x).
4. One RDO optimiser step (ablation, addition and retain terms on `--batch` examples of each kind,
   30-token targets) vs one forward+backward of the same ablation batch (about 3x expected: three terms).
5. Judged refusal of three 20-prompt sets (harmful, harmless, borderline; 40 new tokens) from one generation
   call vs one call per set (`scoring.refusal_rates`; decoding costs per step, so expected well above 1x).
6. The embedded model only: loading it from its kept float32 copy vs converting the GGUF again, the
   tokenizer included (`checkpoint_cache`; expected >= 10x).
With `--out results/benchmarks.json` the figures and the machine are written to that file, from which
`failclosed reproduce --page-only` puts them on docs/results.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from failclosed_interp.chat import tokenize_prompts
from failclosed_interp.generation import GenerationConfig, generate_tokens
from failclosed_interp.interventions import Ablation, intervene
from failclosed_interp.models import EMBEDDED_MODEL, load_model
from failclosed_interp.prompts import builtin
from failclosed_interp.scoring import refusal_rate, refusal_rates
from failclosed_interp.adapters import LoraSettings
from failclosed_interp.training import DEFAULT_REFUSALS, Example, TrainConfig, train_lora


def timed(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_generation(model, prompts, repeats: int) -> dict:
    cached = GenerationConfig(max_new_tokens=32, batch_size=len(prompts))
    uncached = GenerationConfig(max_new_tokens=32, batch_size=len(prompts), use_cache=False)
    # Both decode the same greedy tokens, so they stop at the same step and do the same work.
    t_cached = timed(lambda: generate_tokens(model, prompts, cached, progress=False), repeats)
    t_uncached = timed(lambda: generate_tokens(model, prompts, uncached, progress=False), max(1, repeats // 2))
    return {"cached_s": t_cached, "uncached_s": t_uncached, "speedup": t_uncached / t_cached}


@torch.no_grad()
def bench_ablation_forward(model, prompts, repeats: int) -> dict:
    batch = tokenize_prompts(model, prompts)
    direction = torch.randn(1, model.d_model, generator=torch.Generator().manual_seed(0))

    def plain():
        model.bridge(batch.input_ids, attention_mask=batch.attention_mask)

    def ablated():
        with intervene(model, [Ablation(direction)]):
            model.bridge(batch.input_ids, attention_mask=batch.attention_mask)

    t_plain, t_ablated = timed(plain, repeats), timed(ablated, repeats)
    n_hooks = 3 * model.n_layers
    return {"plain_s": t_plain, "ablated_s": t_ablated, "ratio": t_ablated / t_plain, "hooks": n_hooks,
            "tokens": int(batch.attention_mask.sum())}


def bench_progressive_step(model_name: str, prompts, repeats: int) -> dict:
    """Each `train_lora` call below is exactly one optimiser step on the same 8 safety examples."""
    model = load_model(model_name, lora=LoraSettings())
    examples = [Example(p, DEFAULT_REFUSALS[i % len(DEFAULT_REFUSALS)], "safety") for i, p in enumerate(prompts)]
    config = TrainConfig(epochs=1, batch_size=len(examples))
    directions = torch.randn(3, model.d_model, generator=torch.Generator().manual_seed(0))
    ablation = [Ablation(directions)]
    t_plain = timed(lambda: train_lora(model, examples, config, progress=False), repeats)
    t_ablated = timed(lambda: train_lora(model, examples, config, safety_interventions=ablation, progress=False), repeats)
    return {"plain_s": t_plain, "progressive_s": t_ablated, "ratio": t_ablated / t_plain}


def bench_rdo_step(model, prompts, repeats: int) -> dict:
    """One RDO step through `_Objective.step` (the clean retain reference is cached by the warm-up call,
    as it is after the first epoch of a real run) against a forward+backward of the ablation batch."""
    from failclosed_interp.directions import Direction
    from failclosed_interp.rdo import RDOConfig, _frozen, _Objective
    from failclosed_interp.rdo_targets import RDOTargets
    from failclosed_interp.training.data import collate, example_token_ids
    from failclosed_interp.training.trainer import answer_cross_entropy

    answer = " ".join(["Here is a short and careful answer to the question you asked"] * 3)
    harmful = builtin("harmful", "test").take(len(prompts), seed=0).to_list()
    targets = RDOTargets(tuple(Example(p, answer, "utility", False) for p in harmful),
                         tuple(Example(p, DEFAULT_REFUSALS[0], "utility", False) for p in prompts),
                         tuple(Example(p, answer, "utility", False) for p in prompts))
    config = RDOConfig(batch_size=len(prompts), micro_batch_size=len(prompts), target_tokens=30)
    reference = Direction(torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)), layer=model.n_layers // 2)
    v = torch.nn.Parameter(reference.vector.clone())
    idx = list(range(len(prompts)))
    with _frozen(model.bridge):
        objective = _Objective(model, targets, reference, config, None)
        t_step = timed(lambda: objective.step(v, idx), repeats)
    batch = collate(model, [example_token_ids(model, e, 256) for e in targets.ablation])

    def forward_backward():
        logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask)
        answer_cross_entropy(logits, batch.labels).backward()

    t_fb = timed(forward_backward, repeats)
    model.bridge.zero_grad(set_to_none=True)
    return {"rdo_step_s": t_step, "forward_backward_s": t_fb, "ratio": t_step / t_fb,
            "tokens": int(batch.attention_mask.sum())}


def bench_joint_generation(model, repeats: int) -> dict:
    sets = {kind: builtin(kind, "test").take_up_to(20, seed=0).to_list() for kind in ("harmful", "harmless", "borderline")}
    generation = GenerationConfig(max_new_tokens=40)
    t_each = timed(lambda: [refusal_rate(model, p, generation=generation, progress=False) for p in sets.values()], repeats)
    t_joint = timed(lambda: refusal_rates(model, sets, generation=generation, progress=False), repeats)
    return {"separate_s": t_each, "joint_s": t_joint, "speedup": t_each / t_joint, "prompts": sum(map(len, sets.values()))}


def bench_embedded_load(repeats: int) -> dict:
    from failclosed_interp.models import embedded_from_gguf, load_hf

    t_gguf = timed(embedded_from_gguf, max(1, repeats // 2))
    t_kept = timed(lambda: load_hf(EMBEDDED_MODEL), repeats)  # the warm-up call makes the copy if there is none
    return {"gguf_s": t_gguf, "kept_copy_s": t_kept, "speedup": t_gguf / t_kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="generation,forward,step,rdo,joint,load", help="comma-separated subset to run")
    parser.add_argument("--out", help="also write the figures and the machine to this JSON file")
    args = parser.parse_args()
    only = set(args.only.split(","))
    torch.manual_seed(0)
    model = load_model(args.model)
    prompts = builtin("harmless", "test").take(args.batch, seed=0).to_list()
    print(f"model {model.name} ({model.n_layers} layers, d_model {model.d_model}), batch {args.batch}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    measured = {}
    if "generation" in only:
        gen = measured["generation"] = bench_generation(model, prompts, args.repeats)
        print(f"generation, 32 new tokens: cached {gen['cached_s']:.2f} s, uncached {gen['uncached_s']:.2f} s "
              f"-> cached is {gen['speedup']:.1f}x faster (target >= 5x)")
    if "forward" in only:
        fwd = measured["forward"] = bench_ablation_forward(model, prompts, args.repeats)
        print(f"forward, {fwd['tokens']} tokens: plain {fwd['plain_s'] * 1000:.0f} ms, with ablation at {fwd['hooks']} "
              f"sites {fwd['ablated_s'] * 1000:.0f} ms -> ratio {fwd['ratio']:.3f} (target <= 1.15)")
    if "step" in only:
        step = measured["step"] = bench_progressive_step(args.model, prompts, args.repeats)
        print(f"LoRA training step, batch {args.batch}: plain {step['plain_s']:.2f} s, with 3 directions ablated "
              f"{step['progressive_s']:.2f} s -> ratio {step['ratio']:.3f} (target <= 1.3)")
    if "rdo" in only:
        rdo = measured["rdo"] = bench_rdo_step(model, prompts, args.repeats)
        print(f"RDO step, {args.batch} examples of each kind: {rdo['rdo_step_s']:.2f} s, forward+backward of the "
              f"{rdo['tokens']}-token ablation batch {rdo['forward_backward_s']:.2f} s -> ratio {rdo['ratio']:.2f} "
              f"(three terms: about 3 expected)")
    if "joint" in only:
        joint = measured["joint_generation"] = bench_joint_generation(model, args.repeats)
        print(f"judged refusal of 3 sets ({joint['prompts']} prompts, 40 new tokens): one call per set "
              f"{joint['separate_s']:.1f} s, one call for all {joint['joint_s']:.1f} s -> {joint['speedup']:.2f}x faster")
    if "load" in only and args.model == EMBEDDED_MODEL:
        load = measured["load"] = bench_embedded_load(args.repeats)
        print(f"embedded model load: from the GGUF {load['gguf_s']:.1f} s, from the kept copy {load['kept_copy_s']:.2f} s "
              f"-> {load['speedup']:.0f}x faster (target >= 10x)")
    if args.out:
        from failclosed_interp.artifacts import write_json
        from failclosed_interp.stopwatch import machine

        write_json(args.out, {"model": model.name, "batch": args.batch, "repeats": args.repeats,
                              "machine": machine(), "benchmarks": measured})


if __name__ == "__main__":
    main()
