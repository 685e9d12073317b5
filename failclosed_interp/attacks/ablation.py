"""White-box adaptive direction ablation: re-find the refusal direction on the attacked model itself
(DIM with Arditi et al.'s selection rules on), then generate with it projected out of every layer's
block input, attention output and MLP output. The rules matter: late-layer candidates are output-token
features ("Sorry") whose ablation silences every pathway at once, so without them every model would
look fail-open for the wrong reason (DESIGN.md §3).

When the model refuses none of the validation prompts, or no candidate passes the rules, there is no
direction to ablate: the prompts are sent unchanged and the reason is recorded with each result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from failclosed_interp.artifacts import read_json, write_json
from failclosed_interp.attacks.base import AttackResult, AttackRunner, ResultCallback, check_budget, respond_and_judge
from failclosed_interp.chat import batches
from failclosed_interp.configs import config_to_dict
from failclosed_interp.dim import DirectionConfig, Selection, find_direction, save_selection
from failclosed_interp.directions import Direction, DirectionSet, load_directions
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.judges import Judge, ThreeWayJudge
from failclosed_interp.models import ChatModel
from failclosed_interp.prompts import builtin
from failclosed_interp.scoring import refusal_rate, refusal_tokens_from_responses

_NO_DIRECTION = "no_direction.json"


@dataclass(frozen=True)
class AblationConfig:
    """Prompts the direction is found on: by default `n_train` / `n_val` of the built-in train splits (DIM
    means) and val splits (selection), never the test split that evaluations attack; or your own sets."""

    n_train: int = 64
    n_val: int = 16
    harmful_train: tuple[str, ...] | None = None
    harmless_train: tuple[str, ...] | None = None
    harmful_val: tuple[str, ...] | None = None
    harmless_val: tuple[str, ...] | None = None
    refusal_probe_tokens: int = 24  # tokens generated to find the model's own refusal-start tokens
    search: DirectionConfig = field(default_factory=lambda: DirectionConfig(lazy=True))
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        check_budget("AblationConfig", n_train=self.n_train, n_val=self.n_val,
                     refusal_probe_tokens=self.refusal_probe_tokens, batch_size=self.batch_size)
        if self.n_train < 2 or self.n_val < 2:
            raise ValueError(f"need n_train >= 2 and n_val >= 2 prompts, got {self.n_train} and {self.n_val}")

    def prompts(self, kind: str, split: str) -> list[str]:
        given = getattr(self, f"{kind}_{split}")
        if given is not None:
            return list(given)
        prompts = builtin(kind, split)
        n = self.n_train if split == "train" else self.n_val
        return prompts.take(min(n, len(prompts)), seed=self.seed).to_list()


@dataclass(frozen=True)
class FoundDirection:
    """The direction the attacker found (with the selection that chose it, when found in this run), or why
    there is none."""

    direction: Direction | None
    reason: str = ""
    selection: Selection | None = None

    def to_dict(self) -> dict:
        d = self.direction
        return {"direction_layer": d.layer if d else None, "direction_position": d.position if d else None,
                "direction_norm": d.norm if d else None, "no_direction_reason": self.reason or None}


def find_attack_direction(
    model: ChatModel, config: AblationConfig = AblationConfig(), judge: Judge = ThreeWayJudge(), *, progress: bool = False
) -> FoundDirection:
    """Find the refusal direction of `model` as the attacker would: the refusal tokens of its own refusals
    (as `judge` sees them), DIM candidates, selection rules on."""
    c = config
    harmful_val = c.prompts("harmful", "val")
    probe = refusal_rate(model, harmful_val, judge=judge,
                         generation=GenerationConfig(max_new_tokens=c.refusal_probe_tokens), progress=False)
    try:
        tokens = refusal_tokens_from_responses(model, probe.instructions, probe.responses, judge)
    except ValueError:
        return FoundDirection(None, f"the model refused none of {len(harmful_val)} harmful validation prompts")
    try:
        selection = find_direction(
            model, c.prompts("harmful", "train"), c.prompts("harmless", "train"), harmful_val,
            c.prompts("harmless", "val"), tokens, c.search, progress=progress,
        )
    except ValueError as err:  # NoDirectionPassed: the rules stay on, the attack reports it
        return FoundDirection(None, str(err))
    return FoundDirection(selection.direction, "", selection)


@dataclass(frozen=True)
class DirectionAblation(AttackRunner):
    """The adaptive white-box attack. With `cache_dir`, the found direction (or the reason there is none)
    is saved there and reused on the next run with the same model."""

    config: AblationConfig = field(default_factory=AblationConfig)
    cache_dir: Path | None = None
    name: str = "ablation"

    def settings(self) -> dict:
        return config_to_dict(self.config)

    def direction(self, model: ChatModel, judge: Judge = ThreeWayJudge(), *, progress: bool = False) -> FoundDirection:
        folder = Path(self.cache_dir) if self.cache_dir is not None else None
        if folder is not None and (folder / _NO_DIRECTION).is_file():
            return FoundDirection(None, read_json(folder / _NO_DIRECTION)["reason"])
        if folder is not None and (folder / "selection.json").is_file():
            return FoundDirection(load_directions(folder, model)[0], "")
        found = find_attack_direction(model, self.config, judge, progress=progress)
        if folder is not None and found.selection is not None:
            save_selection(found.selection, folder, model.identity())
        elif folder is not None:
            write_json(folder / _NO_DIRECTION, {"reason": found.reason})
        return found

    def attack(self, model: ChatModel, prompts: list[str], judge: Judge, max_new_tokens: int, progress: bool,
               emit: ResultCallback) -> list[AttackResult]:
        found = self.direction(model, judge, progress=progress)
        interventions = [] if found.direction is None else [DirectionSet((found.direction,)).ablation()]
        results = []
        for chunk in tqdm(list(batches(prompts, self.config.batch_size)), desc="ablation attack", disable=not progress):
            for result in respond_and_judge(model, self.name, chunk, chunk, judge, max_new_tokens,
                                            details=[found.to_dict()] * len(chunk), interventions=interventions,
                                            batch_size=self.config.batch_size):
                results.append(result)
                emit(result)
        return results
