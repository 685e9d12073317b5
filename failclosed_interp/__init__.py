"""failclosed_interp: refusal directions, interventions and fail-closed alignment on TransformerLens 4.

The names below are the everyday API; each lives in the module named in docs/architecture.md."""

from failclosed_interp.adapters import LoraSettings, save_adapter
from failclosed_interp.attacks import GCG, PAIR, AttackResult, AutoDAN, DirectionAblation, HumanTemplates
from failclosed_interp.audit import AuditConfig, AuditResult, audit_job, audit_model, run_audit
from failclosed_interp.chat import format_prompt, post_instruction_positions, tokenize_prompts
from failclosed_interp.dim import DirectionConfig, Selection, dim_candidates, select_direction
from failclosed_interp.directions import Direction, DirectionSet, load_directions, save_directions
from failclosed_interp.evaluate import EvalConfig, ModelSpec, evaluate
from failclosed_interp.generation import GenerationConfig, generate
from failclosed_interp.interventions import Ablation, Addition, hook_name, intervene
from failclosed_interp.judges import LLMJudge, PrefixJudge, SubstringJudge
from failclosed_interp.models import EMBEDDED_MODEL, ChatModel, load_model
from failclosed_interp.prompts import PromptSet, builtin, load_prompts
from failclosed_interp.rdo import RDOConfig, RDOTargets, optimize_direction, rdo_targets
from failclosed_interp.scoring import refusal_rate, refusal_scores
from failclosed_interp.search import find_direction, own_refusal_tokens
from failclosed_interp.splits import PromptSplits
from failclosed_interp.stats import RateEstimate, bootstrap_mean
from failclosed_interp.toys import load_toy
from failclosed_interp.perplexity import Perplexity, perplexity

__all__ = [
    "GCG", "PAIR", "AttackResult", "AutoDAN", "DirectionAblation", "EvalConfig", "HumanTemplates", "ModelSpec", "evaluate",
    "EMBEDDED_MODEL", "Ablation", "Addition", "ChatModel", "Direction", "DirectionConfig", "DirectionSet",
    "GenerationConfig", "LLMJudge", "LoraSettings", "Perplexity", "PrefixJudge", "PromptSet", "RateEstimate", "Selection",
    "SubstringJudge", "bootstrap_mean", "builtin", "dim_candidates", "find_direction", "format_prompt", "generate",
    "hook_name", "intervene", "load_directions", "load_model", "load_prompts", "perplexity", "post_instruction_positions",
    "refusal_rate", "refusal_scores", "save_adapter", "save_directions", "select_direction", "tokenize_prompts",
    "RDOConfig", "RDOTargets", "optimize_direction", "own_refusal_tokens", "rdo_targets",
    "AuditConfig", "AuditResult", "PromptSplits", "audit_job", "audit_model", "load_toy", "run_audit",
]
