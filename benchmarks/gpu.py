"""GPU cost of the toolkit's hooked paths against plain HF + PEFT, on random-weight Llamas of real shapes.

    python benchmarks/gpu.py                # 1B and 8B Llama shapes, bf16, one CUDA device
    python benchmarks/gpu.py --shapes 8b    # one shape
    python benchmarks/gpu.py --tiny         # a tiny shape on CPU in float32 (a smoke test, not a measurement)

For each shape it prints three ratios, each against a baseline measured in the same run on the same weights:
1. progressive LoRA step (3 directions ablated at the block input, attention output and MLP output of every
   layer, through the bridge) / plain HF+PEFT LoRA step (LoRA r=16 on all 7 projections, batch 8 x 256);
2. hooked forward (same ablation) / plain HF forward;
3. KV-cached generation under the ablation / HF generate (32 new tokens).
Plain baselines run before the bridge wraps the model (wrapping reroutes the HF module's forward).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

from failclosed_interp.adapters import LoraSettings, inject_lora
from failclosed_interp.interventions import Ablation, intervene
from failclosed_interp.models import boot_bridge
from failclosed_interp.replicas import replica_tokenizer
from run_benchmarks import timed


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


SHAPES = {
    "1b": Shape("Llama-3.2-1B shape", 2048, 16, 32, 8, 8192, 128_256),
    "8b": Shape("Llama-3-8B shape", 4096, 32, 32, 8, 14_336, 128_256),
}
TINY = Shape("tiny shape (CPU smoke test)", 64, 2, 4, 2, 128, 512)


def build(shape: Shape, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    inject_lora(model, LoraSettings(r=16, alpha=32))
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(shape: Shape, device: str, dtype: torch.dtype, batch: int, seq: int, new_tokens: int, repeats: int) -> dict:
    hf = build(shape, device, dtype)
    ids = torch.randint(0, shape.vocab, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    params = [p for n, p in hf.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step(forward):
        def run():
            optimizer.zero_grad(set_to_none=True)
            logits = forward()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            sync(device)
        return run

    def timed_no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
            sync(device)
        return timed(run, repeats)

    generate = lambda: hf.generate(ids[:, :32], attention_mask=mask[:, :32], max_new_tokens=new_tokens,
                                   min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    hf.train()
    plain = {"step": timed(step(lambda: hf(input_ids=ids, attention_mask=mask).logits), repeats)}
    hf.eval()
    plain["forward"] = timed_no_grad(lambda: hf(input_ids=ids, attention_mask=mask))
    plain["generate"] = timed_no_grad(generate)

    model = boot_bridge(hf, replica_tokenizer("tiny-llama3"), shape.name)
    basis = torch.randn(3, shape.hidden, generator=torch.Generator().manual_seed(1))
    ablation = [Ablation(basis, skip_template_prefix=False)]
    with intervene(model, ablation):
        model.bridge.train()
        hooked = {"step": timed(step(lambda: model.bridge(ids, attention_mask=mask)), repeats)}
        model.bridge.eval()
        hooked["forward"] = timed_no_grad(lambda: model.bridge(ids, attention_mask=mask))
        hooked["generate"] = timed_no_grad(generate)
    return {"plain": plain, "hooked": hooked}


ROWS = [("step", "progressive LoRA step / HF+PEFT LoRA step"), ("forward", "hooked forward / plain forward"),
        ("generate", "generation under hooks / HF generate")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape on CPU in float32 (smoke test)")
    parser.add_argument("--shapes", default="1b,8b", help="comma-separated: 1b, 8b (default both)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.tiny:
        runs, device, dtype, batch, seq, new, repeats = [TINY], "cpu", torch.float32, 2, 64, 4, 1
    else:
        if not torch.cuda.is_available():
            print("benchmarks/gpu.py needs a CUDA device (none found); run it on a GPU machine, or pass --tiny for "
                  "the CPU smoke test", file=sys.stderr)
            return 2
        bad = [s for s in args.shapes.split(",") if s not in SHAPES]
        if bad:
            print(f"unknown shape(s) {bad}; choose from {sorted(SHAPES)}", file=sys.stderr)
            return 2
        runs = [SHAPES[s] for s in args.shapes.split(",")]
        device, dtype, batch, seq, new, repeats = "cuda", torch.bfloat16, 8, 256, 32, args.repeats
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {where}, dtype: {str(dtype).removeprefix('torch.')}, batch {batch} x {seq}, "
          f"{new} new tokens, median of {repeats}")
    for shape in runs:
        start = time.perf_counter()
        result = measure(shape, device, dtype, batch, seq, new, repeats)
        print(f"\n{shape.name} (d_model {shape.hidden}, {shape.layers} layers), {time.perf_counter() - start:.0f} s in all")
        for key, label in ROWS:
            plain, hooked = result["plain"][key], result["hooked"][key]
            print(f"  {label:<45} {hooked / plain:5.2f}x   ({hooked * 1e3:8.1f} ms / {plain * 1e3:8.1f} ms)")
        del result
        if device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
