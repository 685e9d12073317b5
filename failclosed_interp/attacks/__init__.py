"""Jailbreak attacks with budgets, one module each, behind one small protocol: `attack.run(model, prompts,
judge=...) -> list[AttackResult]` (one result per prompt; success = the judge saw no refusal in >= 64 new
tokens). GCG, AutoDAN, PAIR, human templates, and the white-box adaptive direction-ablation attacker
(`adaptive_attack`, with its own prompts and a KL budget curve; `DirectionAblation` wraps it as an Attack)."""

from failclosed_interp.attacks.ablation import DirectionAblation, budget_curve
from failclosed_interp.attacks.adaptive import (
    AdaptiveAttackConfig, AdaptiveAttackResult, AttackSearch, BudgetOutcome, adaptive_attack, adaptive_attack_job,
    load_search, save_search, search_directions, strongest_within,
)
from failclosed_interp.attacks.autodan import AutoDAN, AutoDANConfig, builtin_prototype
from failclosed_interp.attacks.base import MIN_JUDGED_TOKENS, Attack, AttackResult
from failclosed_interp.attacks.gcg import GCG, GCGConfig, optimize_suffix
from failclosed_interp.attacks.pair import PAIR, PAIRConfig
from failclosed_interp.attacks.templates import PLACEHOLDERS, HumanTemplates, Template, builtin_templates, load_templates

__all__ = [
    "GCG", "MIN_JUDGED_TOKENS", "PAIR", "PLACEHOLDERS", "AdaptiveAttackConfig", "AdaptiveAttackResult", "Attack",
    "AttackResult", "AttackSearch", "AutoDAN", "AutoDANConfig", "BudgetOutcome", "DirectionAblation", "GCGConfig",
    "HumanTemplates", "PAIRConfig", "Template", "adaptive_attack", "adaptive_attack_job", "budget_curve",
    "builtin_prototype", "builtin_templates", "load_search", "load_templates", "optimize_suffix", "save_search",
    "search_directions", "strongest_within",
]
