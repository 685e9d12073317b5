"""Prompt sets: the built-in harmful / harmless / borderline sets and loaders for your own data."""

from failclosed_interp.prompts.loaders import TEXT_COLUMNS, load_hf_dataset, load_prompts, read_rows
from failclosed_interp.prompts.sets import KINDS, SPLITS, PromptSet, builtin

__all__ = ["KINDS", "SPLITS", "TEXT_COLUMNS", "PromptSet", "builtin", "load_hf_dataset", "load_prompts", "read_rows"]
