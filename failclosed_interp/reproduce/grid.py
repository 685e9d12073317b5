"""The experiment grid: which models are trained (recipe x training seed) and what is measured on each.

Each `Experiment` is one unit of work with one small results file. Its `config` is the full JSON of the
stage config it runs, so a results file is reused only for exactly the experiment it records."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from failclosed_interp.adapters import LoraSettings
from failclosed_interp.align import AlignConfig, recipe
from failclosed_interp.attacks import AdaptiveAttackConfig, AutoDANConfig, GCGConfig, PAIRConfig
from failclosed_interp.audit import AuditConfig
from failclosed_interp.audit.meter import MeasureConfig
from failclosed_interp.configs import config_to_dict
from failclosed_interp.dim import DirectionConfig, FallbackRules
from failclosed_interp.evaluate import EvalConfig
from failclosed_interp.models import EMBEDDED_MODEL
from failclosed_interp.public_columns import public_settings
from failclosed_interp.reproduce.recipes import GRID_RECIPES, SEEDED_RECIPES
from failclosed_interp.reproduce.selection import SelectionRule
from failclosed_interp.reproduce.validation import ValidationConfig
from failclosed_interp.search import DirectionJobConfig
from failclosed_interp.rdo_config import RDOConfig
from failclosed_interp.training import SFTConfig, TrainConfig

KINDS = ("align", "validation", "audit", "attacks", "public")
LATER_SEEDS = ("chosen", "all")  # GridConfig.later_seeds
QUICK_MODEL = "tiny-llama"
# Rough first-run estimates (seconds on 2 CPU cores) before any result of the same kind exists; once one
# has finished, the runner estimates from measured wall times instead.
FIRST_ESTIMATE_S = {"align": 70 * 60, "validation": 10 * 60, "audit": 15 * 60, "attacks": 50 * 60, "public": 6 * 60}
QUICK_ESTIMATE_S = {"align": 20, "validation": 10, "audit": 20, "attacks": 20, "public": 5}


@dataclass(frozen=True)
class GridConfig:
    """The grid's size. `seeds`: training seeds; every recipe trains on the first one. `later_seeds`: which
    recipes train on the others: "chosen" (the default) the sft baseline and the recipe the selection rule
    chooses on the first seed's validation results, which run first; "all": the sft baseline and every
    candidate of `recipes.SEEDED_RECIPES`, each measured on validation prompts on every seed (the rule then uses
    seed means). `attack_seeds`: training seeds whose models are attacked. `quick`: the same grid on a tiny
    random model with tiny budgets (for CI: checks the plumbing, not the science)."""

    model: str = EMBEDDED_MODEL
    seeds: tuple[int, ...] = (0, 1, 2)
    attack_seeds: tuple[int, ...] = (0,)
    recipes: tuple[str, ...] = tuple(GRID_RECIPES)  # in run order within a seed (see `recipes.GRID_RECIPES`)
    quick: bool = False
    later_seeds: str = "chosen"

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "attack_seeds", tuple(self.attack_seeds))
        object.__setattr__(self, "recipes", tuple(self.recipes))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if not set(self.attack_seeds) <= set(self.seeds):
            raise ValueError(f"attack_seeds {self.attack_seeds} must be among seeds {self.seeds}")
        unknown = [r for r in self.recipes if r not in GRID_RECIPES]
        if unknown or not self.recipes:
            raise ValueError(f"recipes {list(self.recipes)}: each must be one of {list(GRID_RECIPES)}")
        if self.later_seeds not in LATER_SEEDS:
            raise ValueError(f"later_seeds must be one of {LATER_SEEDS}, got {self.later_seeds!r}")
        if self.quick and self.model != EMBEDDED_MODEL and self.model != QUICK_MODEL:
            raise ValueError(f"quick mode runs on {QUICK_MODEL!r}; leave model at its default")


@dataclass(frozen=True)
class Experiment:
    """One unit of the grid. `model_of`: the align experiment whose final model an audit/attacks unit studies."""

    name: str
    kind: str
    recipe: str
    seed: int
    config: dict = field(compare=False)
    model_of: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"experiment kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def fingerprint(self) -> str:
        """Identifies the work: the same fingerprint means the same experiment, so its results are reused."""
        text = json.dumps({"kind": self.kind, "config": self.config, "model_of": self.model_of}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "recipe": self.recipe, "seed": self.seed,
                "model_of": self.model_of, "fingerprint": self.fingerprint}


# Measured on validation prompts: the candidates for the default recipe and the baseline the rule compares with.
VALIDATED_RECIPES = SelectionRule().recipes


def recipe_config(name: str, seed: int, model: str = EMBEDDED_MODEL, *, quick: bool = False) -> AlignConfig:
    """The AlignConfig a grid recipe trains with, for one training seed (`align.RECIPES` holds the recipes;
    quick mode keeps their method, search and mode with tiny budgets)."""
    if name not in GRID_RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {list(GRID_RECIPES)}")
    row = GRID_RECIPES[name]
    config = dataclasses.replace(recipe(row.align_recipe), **row.overrides)
    if quick:
        return dataclasses.replace(_quick_base(seed), method=config.method, search=config.search, mode=config.mode,
                                   rdo=_QUICK_RDO if config.rdo is not None else None,
                                   defender_search=_QUICK_DEFENDER if config.defender_search is not None else None)
    return dataclasses.replace(config, sft=dataclasses.replace(config.sft, model=model, seed=seed))


_QUICK_RDO = RDOConfig(steps=2, batch_size=2, micro_batch_size=2, target_tokens=4)
_QUICK_ATTACKER = AdaptiveAttackConfig(n_fit=4, positions=(-1,), rdo_steps=0, n_verify=0, refusal_probe_tokens=4)
_QUICK_DEFENDER = dataclasses.replace(_QUICK_ATTACKER, kl_budgets=(math.inf,), report_budget=math.inf)


def _quick_base(seed: int) -> AlignConfig:
    sft = SFTConfig(model=QUICK_MODEL, n_harmful=4, n_harmless=4, n_borderline=2, answer_tokens=4, seed=seed,
                    train=TrainConfig(epochs=1, batch_size=4, lr=1e-2, max_length=200, lora=LoraSettings(r=2, alpha=4)))
    search = DirectionConfig(positions=(-1,), fallback=FallbackRules(kl_threshold=1e9))
    return AlignConfig(sft=sft, rounds=1, directions=DirectionJobConfig(n_train=4, n_val=2, search=search),
                       rdo=None, n_eval=3, eval_tokens=4, attacker=_QUICK_ATTACKER)


def audit_config(quick: bool) -> AuditConfig:
    """The audit settings of the grid (tiny budgets in quick mode)."""
    if quick:
        return AuditConfig(adaptive=True, k_max=2, max_exact=2, n_eval=3, n_harmless=3, n_train=4, n_val=2,
                           steering_coeffs=(1.0,), sweep=False, measure=MeasureConfig(max_new_tokens=4),
                           attacker=_QUICK_ATTACKER)
    return AuditConfig(adaptive=True)


def attacks_config(quick: bool) -> EvalConfig:
    """The attacks and budgets of the grid (tiny budgets in quick mode)."""
    if quick:  # the test suite runs quick mode, and nanogcg is optional there
        return EvalConfig(attacks=("gcg", "ablation"), n_harmful=2, n_compliance=2, ablation=_QUICK_ATTACKER,
                          gcg=GCGConfig(steps=1, search_width=4, top_k=4, suffix_init=" x x", backend="own"))
    # A budget that fits about an hour per model on 2 CPU cores (docs/evaluation.md has the full ones). The
    # ablation attacker has align's settings, so it answers under the search align's summary made.
    return EvalConfig(n_harmful=50, human_templates=3, gcg=GCGConfig(steps=5, search_width=16),
                      autodan=AutoDANConfig(generations=3, population=8), pair=PAIRConfig(iterations=2, streams=2))


def public_config(quick: bool, seed: int) -> dict:
    """The public-set columns of the grid: the test half of each set (`prompts.public`), judged as in align."""
    if quick:
        return public_settings(n=2, seed=seed, max_new_tokens=4)
    return public_settings(seed=seed, max_new_tokens=AlignConfig().eval_tokens)


def validation_config(align_config: AlignConfig, seed: int, quick: bool) -> ValidationConfig:
    """The validation measurements of a model trained with `align_config`: its final summary's generation
    length and adaptive attacker, on every built-in validation prompt (a few in quick mode)."""
    assert align_config.attacker is not None, "every grid recipe's summary runs the adaptive attacker"
    return ValidationConfig(n=3 if quick else None, public_n=2 if quick else None, seed=seed,
                            eval_tokens=align_config.eval_tokens, attacker=align_config.attacker,
                            attacker_tokens=align_config.attacker_tokens)


def build_grid(config: GridConfig = GridConfig(), chosen: str | None = None) -> list[Experiment]:
    """Every experiment, in run order. What the default recipe's choice needs comes first: every model is
    trained and measured on validation prompts (the candidates for the default recipe and the sft baseline),
    seed by seed, so that every recipe's first seed is in before any recipe's second. Then every model is
    audited and measured on the public sets (when the runner is given their folder), seed by seed; the
    attacks, the longest and last, close the grid; among the audits and among the attacks, the required models
    (`GridRecipe.required`) and the chosen recipe's come before the other candidates'. With
    `later_seeds="chosen"` the later seeds train the sft baseline and `chosen`, the recipe the rule chose on the
    first seed (`later_seed_recipes`); while it is None they train the baseline alone, and `pending` names what
    the choice will add."""
    model = QUICK_MODEL if config.quick else config.model
    later = later_seed_recipes(config, chosen)
    trained = [(recipe, seed) for seed in config.seeds for recipe in config.recipes
               if seed == config.seeds[0] or recipe in later]
    validated_seeds = config.seeds if config.later_seeds == "all" else config.seeds[:1]
    chosen_list, measured, attacked = [], [], []
    for recipe, seed in trained:
        name, align_config = f"{recipe}-s{seed}", recipe_config(recipe, seed, model, quick=config.quick)
        align = Experiment(f"align-{name}", "align", recipe, seed, align_config.to_dict())
        chosen_list.append(align)
        if recipe in VALIDATED_RECIPES and seed in validated_seeds:
            chosen_list.append(Experiment(f"validation-{name}", "validation", recipe, seed,
                                          validation_config(align_config, seed, config.quick).to_dict(),
                                          model_of=align.name))
        measured.append(Experiment(f"audit-{name}", "audit", recipe, seed, config_to_dict(audit_config(config.quick)),
                                   model_of=align.name))
        measured.append(Experiment(f"public-{name}", "public", recipe, seed, public_config(config.quick, seed),
                                   model_of=align.name))
        if seed in config.attack_seeds:
            attacked.append(Experiment(f"attacks-{name}", "attacks", recipe, seed,
                                       config_to_dict(attacks_config(config.quick)), model_of=align.name))

    def not_chosen(e: Experiment) -> bool:  # a candidate the grid need not report: measured after the others
        return not (GRID_RECIPES[e.recipe].required or e.recipe == chosen)

    return chosen_list + sorted(measured, key=not_chosen) + sorted(attacked, key=not_chosen)  # a stable sort


def selection_rule(config: GridConfig) -> SelectionRule:
    """The rule that chooses the default recipe among the grid's recipes: `SelectionRule`'s candidates that
    the grid trains (all of them, each then missing, when it trains none)."""
    default = SelectionRule()
    candidates = tuple(c for c in default.candidates if c in config.recipes) or default.candidates
    return dataclasses.replace(default, candidates=candidates)


def later_seed_recipes(config: GridConfig, chosen: str | None) -> tuple[str, ...]:
    """The grid's recipes that train on every seed after the first (see `GridConfig.later_seeds`)."""
    if config.later_seeds == "all":
        return SEEDED_RECIPES
    return tuple(r for r in config.recipes if r == SelectionRule().baseline or r == chosen)


def pending(config: GridConfig, chosen: str | None) -> list[str]:
    """The experiments the choice on the first seed will add to the grid while `chosen` is None (a name with
    `chosen` for the recipe, e.g. `align-chosen-s1`); empty once it is made or when every recipe is seeded."""
    if chosen is not None or config.later_seeds == "all" or len(config.seeds) < 2:
        return []
    kinds = ("align", "audit", "public")
    return ([f"{kind}-chosen-s{seed}" for seed in config.seeds[1:] for kind in kinds]
            + [f"attacks-chosen-s{seed}" for seed in config.seeds[1:] if seed in config.attack_seeds])
