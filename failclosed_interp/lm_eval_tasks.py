"""Optional utility benchmarks through EleutherAI's lm-evaluation-harness (`pip install
'failclosed_interp[lm-eval]'`): any of its tasks (hellaswag, arc_easy, mmlu, ...) or your own task YAMLs
(`include_path`), run on a loaded model's HF module, adapter included.

lm-eval fetches a task's data from the Hugging Face hub unless it is cached or the task reads local
files, so offline machines need the data beforehand; a task lm-eval cannot find or load is an error
that names it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from failclosed_interp.models import ChatModel

INSTALL_HINT = "pip install 'failclosed_interp[lm-eval]' (or pip install lm-eval)"


@dataclass(frozen=True)
class LMEvalConfig:
    """`tasks`: lm-eval task or group names; `limit`: examples per task (None: all of them);
    `include_path`: a folder of extra task YAMLs; `num_fewshot`: None keeps each task's default."""

    tasks: tuple[str, ...]
    limit: int | None = None
    include_path: str | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks or not all(t.strip() for t in self.tasks):
            raise ValueError(f"lm-eval tasks {list(self.tasks)}: name at least one task, e.g. ('arc_easy',)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"lm-eval limit must be >= 1 (or None for every example), got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"lm-eval batch_size must be >= 1, got {self.batch_size}")


def lm_eval_scores(model: ChatModel, config: LMEvalConfig) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} as lm-eval reports them (e.g. "acc,none", "acc_stderr,none"), numbers only."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(f"lm-eval tasks need the lm-eval package: {INSTALL_HINT}") from err
    if model.hf_model is None:
        raise ValueError(f"model {model.name!r} has no HF module for lm-eval to run; use an HF-backed model")
    manager = TaskManager(include_path=config.include_path)
    unknown = [t for t in config.tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {config.include_path}" if config.include_path else ""
        raise ValueError(f"lm-eval knows no task {unknown} among its tasks{where}; list them with `lm-eval ls tasks`")
    harness = HFLM(pretrained=model.hf_model, tokenizer=model.tokenizer, batch_size=config.batch_size)
    output = lm_eval.simple_evaluate(
        model=harness, tasks=list(config.tasks), num_fewshot=config.num_fewshot, limit=config.limit,
        task_manager=manager, log_samples=False, random_seed=config.seed, numpy_random_seed=config.seed,
        torch_random_seed=config.seed, fewshot_random_seed=config.seed,
    )
    return {task: {name: float(value) for name, value in metrics.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
            for task, metrics in output["results"].items()}


def headline_metric(metrics: dict[str, float]) -> tuple[str, float] | None:
    """The metric a table shows for a task: accuracy-like first (acc_norm, acc, exact_match), else the
    first one that is not a standard error."""
    names = [n for n in metrics if "_stderr" not in n]
    for wanted in ("acc_norm", "acc", "exact_match"):
        for name in names:
            if name.split(",")[0] == wanted:
                return name, metrics[name]
    return (names[0], metrics[names[0]]) if names else None


__all__ = ["LMEvalConfig", "headline_metric", "lm_eval_scores"]
