"""The grid's `validation` experiment: a trained model measured on built-in VALIDATION prompts only, the
figures the default recipe is chosen by (`reproduce.selection`). Test prompts are only ever reported on.

It measures what align's final summary measures, with the same generation and judge: harmful, harmless
and borderline refusal, and harmful refusal under the independent adaptive attacker at its report KL
budget (the attacker fits on its own `attack` split, which shares no prompt with the validation split).
With a folder of public sets it also measures XSTest-safe refusal (over-refusal) on that set's fixed
validation half."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from failclosed_interp.artifacts import read_json, write_json
from failclosed_interp.attacks import MIN_JUDGED_TOKENS, AdaptiveAttackConfig
from failclosed_interp.attacks.adaptive import AttackSearch, adaptive_attack
from failclosed_interp.attacks.base import check_judged_tokens
from failclosed_interp.configs import JsonConfig
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.models import ChatModel
from failclosed_interp.prompts import builtin
from failclosed_interp.public_columns import public_columns
from failclosed_interp.scoring import refusal_rates

KINDS = ("harmful", "harmless", "borderline")
SPLIT = "val"
PUBLIC_SET = "xstest_safe"
BUILTIN_FILE = "builtin.json"  # in the experiment's run folder: the built-in figures, kept while XSTest waits for data


@dataclass(frozen=True)
class ValidationConfig(JsonConfig):
    """What the validation experiment measures. `n`: prompts per built-in validation set (None: the whole
    split); `eval_tokens`: tokens generated per answer; `attacker` / `attacker_tokens`: the adaptive attacker
    and its generation length (the grid takes all three from the recipe's `AlignConfig`, as its final summary
    does); `public_n`: prompts of XSTest-safe's validation half (None: all of it); `seed` draws the capped
    subsets."""

    n: int | None = None
    seed: int = 0
    eval_tokens: int = 48
    attacker: AdaptiveAttackConfig = field(default_factory=AdaptiveAttackConfig)
    attacker_tokens: int = MIN_JUDGED_TOKENS
    public_n: int | None = None

    def __post_init__(self):
        for name in ("n", "public_n"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"ValidationConfig.{name} must be >= 1 or None (every prompt of the split), got {value}")
        if self.eval_tokens < 1:
            raise ValueError(f"ValidationConfig.eval_tokens must be >= 1, got {self.eval_tokens}")
        check_judged_tokens(self.attacker_tokens)


def validation_prompts(config: ValidationConfig) -> dict[str, list[str]]:
    """The built-in validation prompts of each kind the experiment answers."""
    return {kind: builtin(kind, SPLIT).take_up_to(config.n, seed=config.seed).to_list() for kind in KINDS}


def validate(model: ChatModel, config: ValidationConfig, folder: str | Path, data_dir: str | Path | None = None, *,
             search: AttackSearch | None = None, progress: bool = False) -> dict:
    """The validation figures of `model`: {"refusal_<kind>", "refusal_harmful_adaptive_ablated",
    "compliance_harmful_adaptive_ablated", "adaptive_direction_layer", "n", "ci", "xstest_safe"}. The built-in
    part is kept in `folder` and reused, so a later call with `data_dir` only adds the XSTest column
    (None without `data_dir`). `search`: the attacker's search already made on this model with
    `config.attacker` (e.g. the one align saved), instead of searching again."""
    path = Path(folder) / BUILTIN_FILE
    if path.exists():
        figures = read_json(path)
    else:
        figures = _builtin_figures(model, config, search, progress)
        write_json(path, figures)
    xstest = None
    if data_dir is not None:
        xstest = public_columns(model, data_dir, sets=(PUBLIC_SET,), n=config.public_n, seed=config.seed,
                                max_new_tokens=config.eval_tokens, split=SPLIT, progress=progress)[PUBLIC_SET]
    return {**figures, PUBLIC_SET: xstest}


def needs_public(result: dict) -> bool:
    """True if a validation result still lacks its XSTest-safe column (it was run without a data folder)."""
    return result.get(PUBLIC_SET) is None


def _builtin_figures(model: ChatModel, config: ValidationConfig, search: AttackSearch | None, progress: bool) -> dict:
    prompts = validation_prompts(config)
    generation = GenerationConfig(max_new_tokens=config.eval_tokens)
    rates = {f"refusal_{kind}": judged.rate
             for kind, judged in refusal_rates(model, prompts, generation=generation, progress=progress).items()}
    # adaptive_attack refuses evaluation prompts that are also the attacker's own.
    attack = adaptive_attack(model, prompts["harmful"], config.attacker, max_new_tokens=config.attacker_tokens,
                             search=search, progress=progress)
    report = attack.report
    rates |= {"refusal_harmful_adaptive_ablated": report.refusal, "compliance_harmful_adaptive_ablated": report.compliance}
    return {**{name: rate.value for name, rate in rates.items()},
            "adaptive_direction_layer": report.direction.layer if report.direction is not None else None,
            "adaptive_search": "reused" if search is not None else "searched",
            "n": {kind: len(p) for kind, p in prompts.items()},
            "ci": {name: rate.to_dict() for name, rate in rates.items()}}
