"""What every command's parser shares: flags that fill fields of a config, and the flag groups several
commands take. A flag left out is absent from the parsed arguments (each command's parser suppresses
defaults), so the config keeps its own default; a flag's `dest` names the field it sets, with
"part.field" for a field of a nested config."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from failclosed_interp.dim import fallback_rules
from failclosed_interp.models import DTYPES, EMBEDDED_MODEL


def command(sub, name: str, help: str, run) -> argparse.ArgumentParser:
    """A subcommand whose left-out flags stay absent, run by `run(args)`."""
    p = sub.add_parser(name, help=help, argument_default=argparse.SUPPRESS)
    p.set_defaults(func=run)
    return p


def given(args: argparse.Namespace, *names: str) -> dict:
    """The flags among `names` (dests) that were given, by dest."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def under(args: argparse.Namespace, prefix: str) -> dict:
    """The given flags whose dest starts with `prefix` (e.g. "ablation."), keyed without it."""
    return {key[len(prefix):]: value for key, value in vars(args).items() if key.startswith(prefix)}


def apply(base, values: dict):
    """`base` (a config) with `values` set: "field" sets a field, "part.field" a field of the nested config `part`."""
    top, nested = {}, {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, fields in nested.items():
        top[head] = apply(top.get(head, getattr(base, head)), fields)
    return dataclasses.replace(base, **top)


def flag_names(parser: argparse.ArgumentParser, message: str) -> str:
    """A library error in the command's terms: each config field a flag sets (e.g. `kl_threshold`,
    `DirectionConfig.kl_threshold`) named by that flag."""
    fields = {}
    for action in parser._actions:
        if action.option_strings and action.dest not in (argparse.SUPPRESS, "help"):
            fields.setdefault(action.dest.rsplit(".", 1)[-1], action.option_strings[-1])
    fields.update({"FallbackRules.kl_threshold": "--fallback-kl-threshold",
                   "FallbackRules.induce_threshold": "--fallback-induce-threshold"})
    for name in sorted(fields, key=len, reverse=True):
        if "_" in name:  # snake_case: a field name, never an English word of the message
            message = re.sub(rf"(?<![\w.-])(?:[A-Z]\w*\.)?{re.escape(name)}\b", fields[name], message)
    return message


# --- values --------------------------------------------------------------------------------------------


def threshold(text: str) -> float | None:
    """A number, or 'off' (None: the rule is off)."""
    return None if text.strip().lower() == "off" else float(text)


def positions(text: str) -> tuple[int, ...] | None:
    """'all' (None: every post-instruction position) or comma-separated negative indices."""
    if text == "all":
        return None
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'all' or comma-separated negative integers like -1,-2") from None


def names(text: str) -> tuple[str, ...]:
    """Comma-separated names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def numbers(text: str) -> tuple[float, ...]:
    """Comma-separated numbers ('inf' allowed)."""
    try:
        return tuple(float(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers or inf, e.g. 0.1,0.3,1,inf") from None


# --- flag groups -----------------------------------------------------------------------------------------


def model_flags(p: argparse.ArgumentParser, *, adapter: bool = True, dest: str | None = None) -> None:
    """--model (and --adapter), --device, --dtype. `dest`: the config field --model sets (left out: the config's
    default); without one, --model is the command's own option and names the embedded model unless given."""
    if dest is None:
        p.add_argument("--model", default=EMBEDDED_MODEL, help=f"built-in name, HF name or local path (default {EMBEDDED_MODEL})")
    else:
        p.add_argument("--model", dest=dest, help=f"built-in name, HF name or local path (default {EMBEDDED_MODEL})")
    if adapter:
        p.add_argument("--adapter", type=Path, default=None, help="LoRA adapter folder (PEFT format), e.g. RUN/sft/adapter")
    device_flags(p)


def data_dir_flag(p: argparse.ArgumentParser) -> None:
    """`--data-dir`: the folder of public benchmark sets; each found set adds a refusal column."""
    p.add_argument("--data-dir", dest="data_dir", type=Path, default=None,
                   help="folder holding public benchmark sets (AdvBench, MaliciousInstruct, TDC2023, XSTest; see "
                        "docs/evaluation.md): adds a refusal column for each to the summary")


def device_flags(p: argparse.ArgumentParser) -> None:
    """--device and --dtype."""
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: where the model loads)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="weights and activations of every model the command loads (default float32 on every device; bfloat16 is the usual choice on GPUs)")


def search_flags(p: argparse.ArgumentParser, at: str) -> None:
    """The DIM search's positions and selection rules, setting the DirectionConfig at `at` (e.g. "search.")."""
    p.add_argument("--positions", dest=f"{at}positions", type=positions,
                   help="token positions of DIM candidates: 'all' post-instruction positions, or negative indices "
                        "such as -1 or -1,-2 (fewer positions = faster selection)")
    p.add_argument("--kl-threshold", dest=f"{at}kl_threshold", type=float,
                   help="selection rule: largest KL on harmless prompts when a candidate is ablated")
    p.add_argument("--induce-threshold", dest=f"{at}induce_threshold", type=threshold,
                   help="selection rule: the harmless refusal score with the candidate added must exceed this "
                        "('off' switches the sufficiency rule off)")
    p.add_argument("--fallback-kl-threshold", type=float,
                   help="only if no candidate passes the rules above: choose among those with KL <= this "
                        "(recorded as fallback rules in the output; default: no fallback, an error)")
    p.add_argument("--fallback-induce-threshold", type=threshold, help="induce rule of the fallback (default 'off')")


def fallback_field(args: argparse.Namespace, at: str) -> dict:
    """The fallback rules the --fallback-* flags give, as the field `fallback` of the DirectionConfig at `at`."""
    fallback = given(args, "fallback_kl_threshold", "fallback_induce_threshold")
    if not fallback:
        return {}
    return {f"{at}fallback": fallback_rules(fallback.get("fallback_kl_threshold"), fallback.get("fallback_induce_threshold"))}


def training_flags(p: argparse.ArgumentParser) -> None:
    """The refusal-SFT settings (the SFTConfig at "sft."; `sft_config` applies them)."""
    p.add_argument("--epochs", dest="sft.train.epochs", type=int, help="training epochs (per round for align)")
    p.add_argument("--lr", dest="sft.train.lr", type=float, help="LoRA learning rate")
    p.add_argument("--rank", type=int, help="LoRA rank r (alpha is scaled to keep alpha/r)")
    for kind in ("harmful", "harmless", "borderline"):
        p.add_argument(f"--n-{kind}", dest=f"sft.n_{kind}", type=int, help=f"built-in {kind} TRAIN prompts")
    p.add_argument("--seed", dest="sft.seed", type=int, help="seed of the prompt subsets and the LoRA init")


def sft_config(args: argparse.Namespace, base):
    """The SFTConfig `base` with `training_flags` and --model (dest "sft.model") applied."""
    config = apply(base, under(args, "sft."))
    if hasattr(args, "rank"):
        lora = config.train.lora.with_rank(args.rank)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, lora=lora))
    return config


def fields_of(args: argparse.Namespace, config) -> dict:
    """The given flags that set a field of `config` (dest "field" or "field.nested")."""
    fields = {f.name for f in dataclasses.fields(config)}
    return {key: value for key, value in vars(args).items() if key.split(".")[0] in fields}


PREFIX_CHOICES = {"both": (False, True), "left-alone": (False,), "ablated": (True,)}


def prefix_choice(text: str) -> tuple[bool, ...]:
    """An --template-prefix value: the AdaptiveAttackConfig.ablate_template_prefix it stands for."""
    if text not in PREFIX_CHOICES:
        raise argparse.ArgumentTypeError(f"{text!r}: choose one of {', '.join(PREFIX_CHOICES)}")
    return PREFIX_CHOICES[text]


def attacker_flags(p: argparse.ArgumentParser, at: str, flag: str = "") -> None:
    """The adaptive ablation attacker's settings (AdaptiveAttackConfig at `at`); its prompts are the built-in
    attack split. `flag` starts every flag's name (e.g. "attacker-" where the command has flags of its own
    with the same names)."""
    def add(name: str, field: str, **kwargs) -> None:
        p.add_argument(f"--{flag}{name}", dest=f"{at}{field}", **kwargs)

    add("kl-budgets", "kl_budgets", type=numbers,
        help="attacker: KL budgets on harmless prompts, one chosen direction each ('inf' = no limit)")
    add("report-budget", "report_budget", type=float, help="attacker: the KL budget its ASR is quoted at")
    add("n-fit", "n_fit", type=int,
        help="attacker: prompts per kind for DIM means and RDO; the rest of its prompts score candidates")
    add("rdo-steps", "rdo_steps", type=int, help="attacker: RDO steps for its RDO direction (0: none)")
    add("positions", "positions", type=positions,
        help="attacker: token positions of DIM candidates: 'all' post-instruction positions, or negative indices such as -1,-2")
    add("layer-stride", "layer_stride", type=int, help="attacker: score the candidates of every k-th layer (1: all)")
    add("n-verify", "n_verify", type=int,
        help="attacker: candidates per budget tried by generating answers (0: choose by refusal score alone)")
    add("template-prefix", "ablate_template_prefix", type=prefix_choice, metavar="{" + ",".join(PREFIX_CHOICES) + "}",
        help="attacker: ablate each candidate with the chat template's prefix left alone, ablated too, or both ways (default)")
