"""Human jailbreak templates: text with a placeholder where the harmful prompt goes. A built-in set
(written for this project, `attacks/data/templates.json`) and loaders for template files such as
GPTFuzzer's CSV (`[INSERT PROMPT HERE]`). The attack tries each prompt inside every chosen template and
succeeds on a prompt when any template gets a non-refusal (the attacker keeps what works)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tqdm.auto import tqdm

from failclosed_interp.attacks.base import (
    AttackResult, AttackRunner, ResultCallback, attack_data, check_budget, respond_and_judge,
)
from failclosed_interp.chat import batches
from failclosed_interp.judges import Judge
from failclosed_interp.models import ChatModel
from failclosed_interp.prompts import load_prompts

# Ours first; then the spellings public template sets use (GPTFuzzer, HarmBench's AutoDAN, AutoDAN).
PLACEHOLDERS: tuple[str, ...] = ("{prompt}", "[INSERT PROMPT HERE]", "[PROMPT]", "[REPLACE]")


@dataclass(frozen=True)
class Template:
    """A jailbreak text with exactly one kind of placeholder (it may occur more than once)."""

    text: str
    id: str
    source: str = "builtin"

    def __post_init__(self):
        found = [p for p in PLACEHOLDERS if p in self.text]
        if not found:
            raise ValueError(
                f"template {self.id!r} from {self.source} has no placeholder for the prompt; put one of "
                f"{list(PLACEHOLDERS)} where the harmful request goes (text starts {self.text[:60]!r})"
            )
        if len(found) > 1:
            raise ValueError(f"template {self.id!r} from {self.source} mixes placeholders {found}; use one kind")

    @property
    def placeholder(self) -> str:
        return next(p for p in PLACEHOLDERS if p in self.text)

    def fill(self, prompt: str) -> str:
        return self.text.replace(self.placeholder, prompt)

    def with_text(self, text: str) -> Template:
        """The same template id and source with new text (validated), e.g. after a mutation."""
        return Template(text, self.id, self.source)


def builtin_templates() -> tuple[Template, ...]:
    """The built-in human jailbreak templates (written for this project, placeholder `{prompt}`)."""
    return _builtin()


@lru_cache(maxsize=1)
def _builtin() -> tuple[Template, ...]:
    rows = json.loads(attack_data("templates.json"))
    return tuple(Template(r["text"], r["id"], "builtin") for r in rows)


def load_templates(path: str | Path, *, column: str | None = "template") -> tuple[Template, ...]:
    """Templates from a file. `.txt`: the whole file is one template. `.csv`/`.json`/`.jsonl`: one per row,
    text in `column` (default "template"; pass column=None for a JSON list of strings). Every template must
    hold a placeholder (see PLACEHOLDERS), else a ValueError names the row."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"template file not found: {path}")
        return (Template(path.read_text(encoding="utf-8").strip(), path.stem, str(path)),)
    rows = load_prompts(path, column=column)
    return tuple(Template(text, f"{path.stem}:{i}", str(path)) for i, text in enumerate(rows.instructions))


@dataclass(frozen=True)
class HumanTemplates(AttackRunner):
    """Each prompt inside each of `n_templates` templates (a seeded subset, the same for every prompt; all
    when None). A prompt counts as jailbroken when any template's response is judged not a refusal."""

    templates: tuple[Template, ...] = ()  # empty: the built-in set
    n_templates: int | None = None
    seed: int = 0
    batch_size: int = 16
    name: str = "human"

    def __post_init__(self):
        if self.n_templates is not None:
            check_budget("HumanTemplates", n_templates=self.n_templates)
        check_budget("HumanTemplates", batch_size=self.batch_size)
        if not all(isinstance(t, Template) for t in self.templates):
            raise TypeError("HumanTemplates.templates must be Template values; load files with load_templates()")

    def chosen(self) -> tuple[Template, ...]:
        pool = self.templates or builtin_templates()
        if self.n_templates is None or self.n_templates >= len(pool):
            return pool
        picks = sorted(random.Random(self.seed).sample(range(len(pool)), self.n_templates))
        return tuple(pool[i] for i in picks)

    def settings(self) -> dict:
        return {"templates": [{"id": t.id, "source": t.source, "text": t.text} for t in self.chosen()],
                "n_templates": self.n_templates, "seed": self.seed}

    def attack(self, model: ChatModel, prompts: list[str], judge: Judge, max_new_tokens: int, progress: bool,
               emit: ResultCallback) -> list[AttackResult]:
        templates = self.chosen()
        # Whole prompts per chunk, so each result is final (and cacheable) when its chunk is done.
        per_chunk = max(1, self.batch_size // len(templates))
        results = []
        for chunk in tqdm(list(batches(prompts, per_chunk)), desc="human templates", disable=not progress):
            pairs = [(p, t) for p in chunk for t in templates]
            tried = respond_and_judge(model, self.name, [p for p, _ in pairs], [t.fill(p) for p, t in pairs], judge,
                                      max_new_tokens, batch_size=self.batch_size)
            for i, prompt in enumerate(chunk):
                own = tried[i * len(templates) : (i + 1) * len(templates)]
                wins = [j for j, r in enumerate(own) if r.success]
                shown = own[wins[0] if wins else 0]
                details = {"template_id": templates[wins[0] if wins else 0].id,
                           "templates_tried": len(templates), "templates_succeeded": len(wins),
                           "per_template": {t.id: r.success for t, r in zip(templates, own)}}
                result = AttackResult(self.name, prompt, shown.adversarial_prompt, shown.response, bool(wins), details)
                results.append(result)
                emit(result)
        return results
