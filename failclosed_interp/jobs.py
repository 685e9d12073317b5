"""Jobs that write a run folder: find a model's refusal direction, and score a prompt file (the main job,
`failclosed demo`, is in `demo.py`). The CLI calls these; notebooks can too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from failclosed_interp.artifacts import write_json
from failclosed_interp.configs import config_to_dict
from failclosed_interp.dim import NoDirectionPassed, Selection, save_selection
from failclosed_interp.directions import load_directions
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.interventions import Intervention
from failclosed_interp.models import ChatModel
from failclosed_interp.plots import layer_position_heatmap, save_figure
from failclosed_interp.prompts import PromptSet
from failclosed_interp.score_log import PROGRESS_FILE
from failclosed_interp.scoring import JudgedResponses, refusal_rate, token_strings
from failclosed_interp.search import DirectionJobConfig, direction_search


def direction_job(
    model: ChatModel, out: str | Path, config: DirectionJobConfig = DirectionJobConfig(),
    interventions: Sequence[Intervention] = (), *, progress=True, png: bool = True,
) -> Selection:
    """Find and select the refusal direction of `model` (with `interventions`, e.g. earlier directions
    ablated, applied throughout); write candidates, the direction and heatmaps (HTML, and PNG with `png`)
    to `out`. A killed job run again on the same model and settings resumes from the scores it kept in
    `out/search_progress.json`."""
    out = Path(out)
    try:
        selection = direction_search(model, config, interventions, progress=progress, log_file=out / PROGRESS_FILE)
    except NoDirectionPassed as err:  # keep the evidence: every candidate's scores
        write_json(out / "candidates.json", err.candidates())
        raise
    save_selection(selection, out, model.identity())
    write_json(out / "direction_job.json", {**config_to_dict(config), "refusal_tokens": token_strings(model, selection.refusal_tokens)})
    _direction_figures(model, selection, out, png)
    return selection


def _direction_figures(model: ChatModel, selection: Selection, out: Path, png: bool) -> None:
    positions = list(selection.positions)
    labels = _position_labels(model, positions)
    chosen = (selection.layer, selection.position)
    for key, title, bar in (
        ("ablation_score", "Harmful refusal score with the candidate ablated (lower = stronger direction)", "refusal score"),
        ("induce_score", "Harmless refusal score with the candidate added (higher = induces refusal)", "refusal score"),
        ("kl", "KL on harmless next-token distribution when ablated (filter: <= threshold)", "KL"),
    ):
        fig = layer_position_heatmap(getattr(selection, key), positions, title=title, colorbar=bar, chosen=chosen,
                                     position_labels=labels)
        save_figure(fig, out / "figures" / key, png=png)


def _position_labels(model: ChatModel, positions: list[int]) -> list[str]:
    from failclosed_interp.chat import format_prompt

    ids = model.tokenizer(format_prompt(model.tokenizer, "x"), add_special_tokens=False)["input_ids"]
    return [model.tokenizer.decode([ids[p]]) for p in positions]


def score_job(
    model: ChatModel, prompts: PromptSet, out_file: str | Path, *, ablate: str | Path | None = None,
    generation: GenerationConfig = GenerationConfig(max_new_tokens=64),
) -> JudgedResponses:
    """Judge `model`'s responses to `prompts` (optionally with saved directions ablated) and write JSON."""
    interventions = [load_directions(ablate, model).ablation()] if ablate else []
    judged = refusal_rate(model, prompts.to_list(), generation=generation, interventions=interventions)
    write_json(out_file, {"model": model.name, "prompts": prompts.name, "ablated": str(ablate) if ablate else None,
                          "max_new_tokens": generation.max_new_tokens, **judged.to_dict()})
    return judged


__all__ = ["DirectionJobConfig", "direction_job", "score_job"]
