"""Jailbreak attacks with budgets, one module each, behind one small protocol: `attack.run(model, prompts,
judge=...) -> list[AttackResult]` (one result per prompt; success = the judge saw no refusal in >= 64 new
tokens). GCG, AutoDAN, PAIR, human templates, and white-box adaptive direction ablation."""

from failclosed_interp.attacks.ablation import AblationConfig, DirectionAblation, find_attack_direction
from failclosed_interp.attacks.autodan import AutoDAN, AutoDANConfig, builtin_prototype
from failclosed_interp.attacks.base import MIN_JUDGED_TOKENS, Attack, AttackResult
from failclosed_interp.attacks.gcg import GCG, GCGConfig, optimize_suffix
from failclosed_interp.attacks.pair import PAIR, PAIRConfig
from failclosed_interp.attacks.templates import PLACEHOLDERS, HumanTemplates, Template, builtin_templates, load_templates

__all__ = [
    "GCG", "MIN_JUDGED_TOKENS", "PAIR", "PLACEHOLDERS", "AblationConfig", "Attack", "AttackResult", "AutoDAN",
    "AutoDANConfig", "DirectionAblation", "GCGConfig", "HumanTemplates", "PAIRConfig", "Template",
    "builtin_prototype", "builtin_templates", "find_attack_direction", "load_templates", "optimize_suffix",
]
