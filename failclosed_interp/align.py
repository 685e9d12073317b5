"""The progressive fail-closed loop (`failclosed align`, arXiv 2602.16977) and its baselines, through one trainer.

Round 0 is plain refusal SFT. At the end of every round the refusal direction the model now uses is
found; round k then fine-tunes the same LoRA with the directions found so far ablated on the safety
batches only, so the model has to rebuild refusal along a new direction, while the utility batches
keep the model close to its frozen reference. With RDO (the default, as the authors): after round 0 the
DIM direction with the selection rules gives the addition layer and strength and the RDO targets, once;
every direction is then RDO's, on the current model toward those same targets. Without RDO each
direction is DIM's. A new direction is trained against only if it mediates refusal now: ablating it
lowers the validation harmful refusal score and adding it raises the harmless one, each by a margin.

Methods, same data, steps and LoRA settings:
- `failclosed`: ablate the span of all found directions (mode "cumulative"), only the last one
  ("last-only"), or a fresh random subset of them at every step ("random-subsets", the empty one
  included, so refusal must hold under every combination, not only all-ablated); each new direction
  is found with the trained-against ones ablated (search "ablated") or on the plain model ("plain").
- `sft`: no ablation; the "standard alignment" baseline trained as long as the others.
- `refat`: refusal-feature adversarial training: ablate the single direction found on the current
  model at the end of the previous round (re-found every round, with nothing ablated).

A run folder holds `examples.json`, `round_K/` (adapter, directions, metrics.json, training.json) for
every completed round, `round_0/rdo/` (the reference direction and the RDO targets, reused by every round), `state.json` (the last completed round), then `final/` and `summary.json`.
Rounds are written completely before `state.json` names them, so a killed run resumes from the last
completed round and ends with the same result as an uninterrupted one. Inside a round, the direction search
(`round_K/search/search_progress.json`), RDO (`round_K/rdo_search/`) and the final summary's adaptive
attacker (`final/adaptive/`) keep their work as it comes (`score_log`), and resume from it too."""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from failclosed_interp.adapters import save_adapter
from failclosed_interp.attacks.adaptive import AdaptiveAttackConfig, adaptive_attack, save_search
from failclosed_interp.attacks.base import MIN_JUDGED_TOKENS
from failclosed_interp.artifacts import atomic_folder, read_json, write_json
from failclosed_interp.broad_search import BROAD_SEARCH, broad_direction
from failclosed_interp.configs import ADDED_LATER, JsonConfig
from failclosed_interp.dim import DirectionConfig, FallbackRules, NoDirectionPassed
from failclosed_interp.directions import Direction, DirectionSet, load_directions, save_directions
from failclosed_interp.distributed import is_main_process
from failclosed_interp.generation import GenerationConfig, generate
from failclosed_interp.interventions import Intervention
from failclosed_interp.models import ChatModel, load_model
from failclosed_interp.orthogonalize import export_checkpoint
from failclosed_interp.jobs import direction_job
from failclosed_interp.public_columns import format_public_columns, public_columns
from failclosed_interp.prompts import builtin
from failclosed_interp.rdo import NoNewDirection, RDOConfig, optimize_direction
from failclosed_interp.rdo_targets import RDOTargets, load_targets, rdo_targets, save_targets
from failclosed_interp.score_log import PROGRESS_FILE, ScoreLog, digest
from failclosed_interp.scoring import (
    JudgedResponses, NoRefusals, first_token_refusal_rate, mediation_scores, refusal_rates, refusal_tokens_from_responses,
)
from failclosed_interp.stats import RateEstimate
from failclosed_interp.stopwatch import Stopwatch
from failclosed_interp.search import DirectionJobConfig, InsideSpan, check_min_new_component, check_new, own_refusal_tokens
from failclosed_interp.training import Example, SFTConfig, TrainConfig, build_sft_examples, train_lora
from failclosed_interp.training.sft import TRAINING_FILE, fresh_lora_model, sft_prompts
from failclosed_interp.training.trainer import StepCallback, adapters_disabled
from failclosed_interp.perplexity import perplexity

METHODS = ("failclosed", "sft", "refat")
MODES = ("cumulative", "last-only", "random-subsets")
SEARCHES = ("ablated", "plain", "broad")
ROUND_CHECKS = ("generate", "logit")
RoundCallback = Callable[[int, dict], None]
STATE_FILE = "state.json"
EXAMPLES_FILE = "examples.json"
SUMMARY_FILE = "summary.json"
REFERENCE_FILE = "reference_answers.json"  # the frozen reference's answers to the test harmless prompts
RDO_FOLDER = "rdo"  # in round_0: the reference direction and the RDO targets


@dataclass(frozen=True)
class AlignConfig(JsonConfig):
    """One progressive run. `rounds` counts the rounds after round 0 (plain SFT); round 0 trains
    `sft.train.epochs` epochs, every later round `retrain_epochs` (None: as many as round 0), on the same
    examples. `min_new_component` is the smallest norm the
    unit-length new direction may keep outside the span of the earlier ones.

    `search` (failclosed only): find each new direction with the trained-against ones ablated
    ("ablated": the next mechanism the model falls back on) or on the plain model, as the adaptive
    attacker does ("plain": the single direction whose ablation now hurts refusal most), or, this project's
    own, by the attacker's procedure with the defender's prompts ("broad": every layer x post-instruction
    position within a KL budget, verified by generation; `broad_search`), with `defender_search`'s settings
    (None: `broad_search.BROAD_SEARCH`). RDO does not refine a broad search's direction.

    `skip_template_prefix`: False ablates every position, the chat template's constant prefix included,
    in training, searches and evaluation (the method); True leaves the prefix alone.
    `min_ablation_drop` / `min_addition_rise`: a new direction is trained against only if ablating it
    lowers the mean validation harmful refusal score (log-odds) by at least this much and adding it
    raises the harmless one by at least that; None switches a check off.
    `round_checks`: how each round's refusal on validation prompts (metrics.json) is measured: "generate" judges
    greedy answers of `eval_tokens` tokens; "logit" counts prompts whose most likely first answer token is a refusal token, with the
    refusal-start tokens of the training refusals (one forward pass per prompt; the final summary is
    generated either way). `attacker`: the adaptive attacker of the final summary; None leaves it out.
    `initial_fallback`: when no DIM candidate passes the main selection rules after round 0 and
    `directions.search` has no fallback of its own, the first direction is chosen by these rules (and
    the run records so); None stops the loop there instead."""

    method: str = "failclosed"
    rounds: int = 3
    mode: str = "cumulative"
    search: str = "ablated"
    sft: SFTConfig = field(default_factory=SFTConfig)
    directions: DirectionJobConfig = field(default_factory=DirectionJobConfig)
    rdo: RDOConfig | None = field(default_factory=RDOConfig)
    min_new_component: float = 0.1
    n_eval: int | None = None  # held-out test prompts per set; None: all of the built-in test split
    eval_tokens: int = 48
    attacker: AdaptiveAttackConfig | None = field(default_factory=AdaptiveAttackConfig)
    attacker_tokens: int = MIN_JUDGED_TOKENS
    skip_template_prefix: bool = False
    min_ablation_drop: float | None = 1.0
    min_addition_rise: float | None = 1.0
    initial_fallback: FallbackRules | None = field(default_factory=lambda: FallbackRules(kl_threshold=0.3, induce_threshold=None))
    round_checks: str = "generate"
    retrain_epochs: int | None = None
    defender_search: AdaptiveAttackConfig | None = field(default=None, metadata=ADDED_LATER)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if self.round_checks not in ROUND_CHECKS:
            raise ValueError(f"round_checks must be one of {ROUND_CHECKS}, got {self.round_checks!r}")
        if self.search == "broad" and self.method == "failclosed" and self.rdo is not None:
            raise ValueError("search 'broad' chooses among DIM candidates itself and RDO does not refine its choice: "
                             "set rdo=None (--rdo-steps 0) or choose another search")
        if self.retrain_epochs is not None and self.retrain_epochs < 1:
            raise ValueError(f"retrain_epochs must be >= 1 (or None: as many as round 0), got {self.retrain_epochs}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1 (round 0 is plain SFT; each further round retrains), got {self.rounds}")
        check_min_new_component("AlignConfig", self.min_new_component)
        if (self.n_eval is not None and self.n_eval < 1) or self.eval_tokens < 1:
            raise ValueError(f"n_eval and eval_tokens must be >= 1, got {self.n_eval} and {self.eval_tokens}")
        for name in ("min_ablation_drop", "min_addition_rise"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite margin >= 0 in refusal log-odds (default 1.0) or None to "
                                 f"switch the check off, got {value}")

    @property
    def model(self) -> str:
        return self.sft.model


# Named presets of AlignConfig values; explicit settings (CLI flags) override them.
RECIPES: dict[str, dict] = {
    # The method as the paper describes it: each direction searched with the earlier ones ablated, all of them
    # ablated together in training, RDO directions, 3 rounds; RDO starts from the reference DIM direction (ours:
    # from a random start, the authors' step budget leaves a direction that fails the mediation check on the
    # embedded model; validation measurements in docs/rdo.md).
    "method": {"search": "ablated", "mode": "cumulative", "rounds": 3, "rdo": RDOConfig(start="init")},
    # The authors' loop as far as this toolkit runs it: directions searched on the plain model, all of them
    # ablated together, each one RDO's toward the round-0 targets, up to 10 rounds (the loop stops earlier
    # when RDO finds no new direction or the new one does not mediate refusal).
    "paper": {"search": "plain", "mode": "cumulative", "rounds": 10, "rdo": RDOConfig()},
    # This project's variant (docs/align.md): each round trains against a fresh random subset of the found
    # directions at every step (the empty one included), directions by DIM at the last prompt token chosen
    # by the declared fallback rules (KL <= 0.3 on harmless prompts, induce rule off), no RDO.
    "project": {"search": "plain", "mode": "random-subsets", "rounds": 3, "rdo": None,
                "directions": DirectionJobConfig(search=DirectionConfig(
                    positions=(-1,), fallback=FallbackRules(kl_threshold=0.3)))},
    # This project's, too (`broad_search`): every round trains against the direction the attacker's procedure finds
    # with the defender's prompts (every layer x post-instruction position, KL <= 0.3 on harmless prompts,
    # verified by generation), all of them ablated together, DIM directions, 3 rounds.
    "broad": {"search": "broad", "mode": "cumulative", "rounds": 3, "rdo": None, "defender_search": BROAD_SEARCH},
    # The same search, trained as `project` is: a fresh random subset of the found directions ablated at every step
    # (the empty one included). Added after `broad`'s first round on the embedded model (validation prompts): trained
    # in the all-ablated state alone, its plain harmful refusal fell far below its refusal with the direction ablated.
    "broad-subsets": {"search": "broad", "mode": "random-subsets", "rounds": 3, "rdo": None, "defender_search": BROAD_SEARCH},
}
# `--recipe default` names one of the recipes above: the one `failclosed reproduce` chooses on validation
# prompts (`reproduce.selection`); the results page says whether this name and that choice agree.
DEFAULT_RECIPE = "project"  # validation chose it on the embedded model: docs/results.md, "Choosing the default recipe"
RECIPES["default"] = RECIPES[DEFAULT_RECIPE]


def recipe(name: str) -> AlignConfig:
    """The AlignConfig of a named recipe (`RECIPES`); change fields with dataclasses.replace."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return AlignConfig(**RECIPES[name])


def with_rdo_steps(config: AlignConfig, steps: int) -> AlignConfig:
    """`config` with at most `steps` RDO steps per direction; 0 switches RDO off (DIM directions only)."""
    if steps == 0:
        return dataclasses.replace(config, rdo=None)
    return dataclasses.replace(config, rdo=dataclasses.replace(config.rdo or RDOConfig(), steps=steps))


def _round_dir(out: Path, k: int) -> Path:
    return out / f"round_{k}"


def _start(out: Path, config: AlignConfig) -> int:
    """The last completed round of a run in `out` (-1 for a new run); refuses a folder of another run.
    A run may be extended: resuming with more `rounds` (and nothing else changed) trains the extra rounds."""
    state_path = out / STATE_FILE
    if not state_path.exists():
        write_json(out / "config.json", config.to_dict())
        return -1
    state = read_json(state_path)
    saved = AlignConfig.from_dict(state["config"]).to_dict()  # settings added since the run started take their defaults
    done = int(state["completed_round"])
    wanted = config.to_dict()
    changed = sorted(k for k in wanted if saved.get(k) != wanted[k] and not (k == "rounds" and config.rounds > done))
    if changed:
        raise ValueError(
            f"{out} holds a run with other settings ({', '.join(changed)} differ); resume it with the same "
            f"settings (see {out / 'config.json'}; only rounds may grow) or choose a new run folder"
        )
    if saved != wanted:
        write_json(out / "config.json", wanted)
    return done


def has_round0_model(run: Path) -> bool:
    """Whether the run folder `run` has finished its round 0 and still holds that round's adapter (a run restored
    from a grid's kept copy keeps its last round only)."""
    return (run / STATE_FILE).exists() and (_round_dir(run, 0) / "adapter").is_dir()


def adopt_round0(source: Path, out: Path, config: AlignConfig) -> bool:
    """Begin the new run in `out` with the round-0 model of the run in `source`: its adapter, training record
    and training examples are copied. Round 0 is plain refusal SFT whatever the method, so runs with the same
    `sft` settings train the same round-0 model; `out`'s round 0 then runs only its own direction search and
    checks. False (nothing copied) while `source` has not finished its round 0, or no longer holds its round-0
    adapter (a run restored from a grid's kept copy keeps its last round only); an error when its `sft`
    settings differ."""
    if not has_round0_model(source):
        return False
    theirs = AlignConfig.from_dict(read_json(source / STATE_FILE)["config"]).sft
    if theirs != config.sft:
        raise ValueError(f"{source} trained its round 0 with other sft settings than this run's; start from a run "
                         f"with the same sft settings (see {source / 'config.json'}) or leave round0_from out")
    if not is_main_process():
        return True
    with atomic_folder(_round_dir(out, 0) / "adapter") as tmp:
        shutil.copytree(_round_dir(source, 0) / "adapter", tmp, dirs_exist_ok=True)
    shutil.copy(_round_dir(source, 0) / TRAINING_FILE, _round_dir(out, 0) / TRAINING_FILE)
    shutil.copy(source / EXAMPLES_FILE, out / EXAMPLES_FILE)
    return True


def _examples(model: ChatModel, out: Path, config: AlignConfig, progress: bool) -> list[Example]:
    """Training examples, generated once by the untrained model and kept in the run folder."""
    path = out / EXAMPLES_FILE
    if path.exists():
        return [Example.from_dict(e) for e in read_json(path)]
    harmful, harmless, borderline = sft_prompts(config.sft)
    examples = build_sft_examples(model, harmful, harmless, borderline,
                                  generation=GenerationConfig(max_new_tokens=config.sft.answer_tokens),
                                  progress=progress)
    write_json(path, [e.to_dict() for e in examples])
    return examples


def round_training(config: AlignConfig, k: int) -> TrainConfig:
    """Round k's training settings: its own seed (data order, dropout), and after round 0 `retrain_epochs`."""
    epochs = config.retrain_epochs if k > 0 and config.retrain_epochs is not None else config.sft.train.epochs
    return dataclasses.replace(config.sft.train, seed=config.sft.train.seed + k, epochs=epochs)


def training_ablation(config: AlignConfig, found: DirectionSet) -> list[Intervention]:
    """The ablation the next round trains against (in mode "random-subsets", the whole span, which
    steps ablate in parts), and that the "ablated" search runs under."""
    if config.method == "sft" or len(found) == 0:
        return []
    prefix = config.skip_template_prefix
    if config.method == "refat" or config.mode == "last-only":
        return [found[len(found) - 1 :].ablation(skip_template_prefix=prefix)]
    return [found.ablation(skip_template_prefix=prefix)]  # QR-orthonormalised span, every layer's block input, attention and MLP output


@dataclass(frozen=True)
class RandomSubsetAblation:
    """Mode "random-subsets": step `step` ablates the span of a random subset of `found`, each direction
    kept with probability 1/2 (the empty subset trains plain refusal). Drawn from (seed, step) alone, so
    a resumed run and every process of a multi-process run draw the same subsets."""

    found: DirectionSet
    seed: int
    skip_template_prefix: bool = False

    def subset(self, step: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return (torch.rand(len(self.found), generator=gen) < 0.5).nonzero().flatten().tolist()

    def __call__(self, step: int) -> list[Intervention]:
        chosen = self.subset(step)
        return [self.found[chosen].ablation(skip_template_prefix=self.skip_template_prefix)] if chosen else []


def safety_interventions(config: AlignConfig, found: DirectionSet,
                         seed: int) -> Sequence[Intervention] | Callable[[int], Sequence[Intervention]]:
    """What each training step's safety batch runs under: `training_ablation`, or per step a random
    subset of the found directions (failclosed, mode "random-subsets")."""
    if config.method == "failclosed" and config.mode == "random-subsets" and len(found):
        return RandomSubsetAblation(found, seed, config.skip_template_prefix)
    return training_ablation(config, found)


def _next_direction(model: ChatModel, config: AlignConfig, found: DirectionSet, out: Path, k: int, progress: bool):
    """(the direction found on the current model, None, notes) or (None, why the loop stops, notes)."""
    base = training_ablation(config, found) if config.method == "failclosed" and config.search == "ablated" else []
    folder, notes = _round_dir(out, k), {}
    try:
        if config.search == "broad" and config.method == "failclosed":
            direction, tokens, found_note = broad_direction(
                model, config.defender_search or BROAD_SEARCH, config.directions, found, config.min_new_component,
                folder / "broad_search", progress=progress)
            notes.update(found_note)
        elif config.rdo is None:
            selection = direction_job(model, folder / "search", _search_config(config, k), interventions=base,
                                      progress=progress, png=False)
            direction, tokens = selection.direction, selection.refusal_tokens
            notes["direction_rule"] = selection.rules()
        else:
            reference, targets, notes = _rdo_reference(model, config, out, progress)
            earlier = found if config.method == "failclosed" and len(found) else None
            direction = optimize_direction(model, reference, targets, config.rdo, base, distinct_from=earlier,
                                           min_residual=config.min_new_component, progress=progress,
                                           log_file=folder / "rdo_search" / PROGRESS_FILE)
            tokens = None  # read off the current model's refusals by the check below
    except NoRefusals as err:
        return None, f"this round's model refuses none of the validation prompts, so it has no refusal to locate: {err}", notes
    except NoDirectionPassed as err:
        return None, f"no refusal direction passed the selection rules on this round's model: {err}", notes
    except NoNewDirection as err:
        return None, f"RDO found no direction outside the span of the {len(found)} earlier ones: {err}", notes
    if config.method == "failclosed":
        try:
            check_new(direction, found, config.min_new_component)
        except InsideSpan as err:
            return None, str(err), notes
    if config.min_ablation_drop is None and config.min_addition_rise is None:
        return direction, None, notes
    try:
        notes["mediation"] = mediation = mediation_check(model, config, direction, base, refusal_tokens=tokens)
    except NoRefusals as err:
        return None, f"this round's model refuses none of the validation prompts, so it has no refusal to locate: {err}", notes
    if not mediation["passed"]:
        return None, (f"the new direction (layer {direction.layer}) does not mediate refusal on validation prompts: "
                      f"{mediation['why']}"), notes
    return direction, None, notes


def _search_config(config: AlignConfig, k: int) -> DirectionJobConfig:
    """The DIM search settings; after round 0, `initial_fallback` fills in a missing fallback."""
    jc = config.directions
    if k == 0 and jc.search.fallback is None and config.initial_fallback is not None:
        return dataclasses.replace(jc, search=dataclasses.replace(jc.search, fallback=config.initial_fallback))
    return jc


def _rdo_reference(model: ChatModel, config: AlignConfig, out: Path, progress: bool) -> tuple[Direction, RDOTargets, dict]:
    """The reference direction (addition layer and strength) and the RDO targets: made once, after round 0,
    from that round's model and its DIM direction, and kept in round_0/rdo for every later round."""
    folder = _round_dir(out, 0) / RDO_FOLDER
    if (folder / "targets.json").exists():
        note = read_json(folder / "reference.json")
        return load_directions(folder / "reference", model)[0], load_targets(folder / "targets.json"), note
    jc = config.directions
    selection = direction_job(model, _round_dir(out, 0) / "search", _search_config(config, 0), progress=progress)
    reference = selection.direction
    targets = rdo_targets(model, jc.prompts("harmful", "train"), jc.prompts("harmless", "train"), reference, config.rdo,
                          refusal_tokens=selection.refusal_tokens, progress=progress)
    note = {"reference_rule": selection.rules(), "reference_layer": reference.layer, "reference_norm": reference.norm,
            "targets": targets.filtered, "n_pairs": len(targets)}
    save_directions(reference, folder / "reference", model.identity())
    save_targets(targets, folder / "targets.json")
    write_json(folder / "reference.json", note)  # written last: its presence marks the folder complete
    return reference, targets, note


def mediation_check(model: ChatModel, config: AlignConfig, direction: Direction,
                    base: Sequence[Intervention] = (), *, refusal_tokens: Sequence[int] | None = None) -> dict:
    """Does `direction` mediate refusal in the current model (under `base`)? On validation prompts: the
    mean harmful refusal score with it ablated, and the mean harmless score with it added at its layer
    with its strength (`direction.norm`), against both without it; refusal tokens from the model's own
    refusals to those harmful prompts (`refusal_tokens`: already read off them, e.g. by the DIM search under
    the same `base`). Each change must reach its margin (a check whose margin is None passes)."""
    jc = config.directions
    harmful, harmless = jc.prompts("harmful", "val"), jc.prompts("harmless", "val")
    tokens = (list(refusal_tokens) if refusal_tokens is not None else
              own_refusal_tokens(model, harmful, jc.refusal_probe_tokens, base, batch_size=jc.search.batch_size)[0])
    scores = mediation_scores(model, direction, harmful, harmless, tokens, base,
                              skip_template_prefix=config.skip_template_prefix)
    drop, rise = scores["harmful_score_drop"], scores["harmless_score_rise"]
    why = [f"{what} {value:.3g} < {name}={margin}"
           for what, value, name, margin in (("ablating it lowers the harmful refusal score by", drop, "min_ablation_drop",
                                              config.min_ablation_drop),
                                             ("adding it raises the harmless refusal score by", rise, "min_addition_rise",
                                              config.min_addition_rise))
           if margin is not None and value < margin]
    return {"harmful_score_drop": drop, "harmless_score_rise": rise, "passed": not why, "why": "; ".join(why)}


def _built_in(config: AlignConfig, kinds: tuple[str, ...], split: str) -> dict[str, list[str]]:
    """Up to `config.n_eval` built-in prompts of each kind from `split` (seeded): "val" for every round's
    checks, "test" for the final summary alone."""
    return {kind: builtin(kind, split).take_up_to(config.n_eval, seed=config.sft.seed).to_list() for kind in kinds}


def _ablated(config: AlignConfig, ablate: DirectionSet | None) -> list[Intervention]:
    """The held-out measurements' interventions: `ablate`'s span projected out, if given."""
    return [] if ablate is None else [ablate.ablation(skip_template_prefix=config.skip_template_prefix)]


def _refusal(model: ChatModel, config: AlignConfig, prompts: list[str], ablate: DirectionSet | None = None):
    """Judged refusal of `prompts` (with `ablate`'s span projected out, if given)."""
    return _refusals(model, config, {"prompts": prompts}, ablate)["prompts"]


def _refusals(model: ChatModel, config: AlignConfig, prompt_sets: dict[str, list[str]],
              ablate: DirectionSet | None = None) -> dict[str, JudgedResponses]:
    """Judged refusal of each prompt set, generated together (with `ablate`'s span projected out, if given)."""
    return refusal_rates(model, prompt_sets, generation=GenerationConfig(max_new_tokens=config.eval_tokens),
                         interventions=_ablated(config, ablate), progress=False)


def _round_metrics(model: ChatModel, config: AlignConfig, found: DirectionSet,
                   examples: Sequence[Example]) -> dict[str, JudgedResponses | RateEstimate]:
    """Refusal on validation harmful and harmless prompts, plain and with everything found so far ablated,
    judged from generations or, with `round_checks="logit"`, from refusal scores (`RateEstimate`s). The
    rounds never read test prompts: the final summary scores them once."""
    val = _built_in(config, ("harmful", "harmless"), "val")
    if config.round_checks == "logit":
        tokens = training_refusal_tokens(model, examples)

        def measure(prompt_sets: dict[str, list[str]], ablate: DirectionSet | None = None) -> dict[str, RateEstimate]:
            return {kind: first_token_refusal_rate(model, prompts, tokens, _ablated(config, ablate))
                    for kind, prompts in prompt_sets.items()}
    else:
        measure = lambda prompt_sets, ablate=None: _refusals(model, config, prompt_sets, ablate)  # noqa: E731
    rates = {f"refusal_{kind}": rate for kind, rate in measure(val).items()}
    if len(found):
        rates["refusal_harmful_all_ablated"] = measure({"harmful": val["harmful"]}, found)["harmful"]
    return rates


def training_refusal_tokens(model: ChatModel, examples: Sequence[Example]) -> list[int]:
    """Refusal-start tokens of the refusals the model is trained on (the safety answers the judge calls
    refusals): what a trained model's refusal score counts, with no generation needed."""
    safety = [e for e in examples if e.kind == "safety"]
    return refusal_tokens_from_responses(model, [e.prompt for e in safety], [e.answer for e in safety])


def align(
    config: AlignConfig, out: str | Path, *, merge: bool = False, device: str | None = None, progress: bool = True,
    on_step: StepCallback | None = None, on_round: RoundCallback | None = None, data_dir: str | Path | None = None,
    evaluate: bool = True, round0_from: str | Path | None = None,
) -> dict:
    """Run (or resume) the progressive loop in `out`; returns the summary (also `out/summary.json`).

    `merge=True` also writes `out/final/merged`, a plain HF checkpoint with the adapter merged in.
    `on_step(step, losses)` is called after every optimiser step of every round, `on_round(k, metrics)`
    after round k with what its metrics.json holds. `data_dir`: a folder holding the public benchmark
    sets (`prompts.public`); the summary then has a column for each. `evaluate=False` trains the rounds
    only and returns {"rounds_completed", "stop_reason", "n_directions"}: the final summary on test prompts is
    skipped (e.g. when settings are chosen on validation prompts); each round's own checks still run.
    `round0_from`: another run folder with the same `sft` settings whose round 0 has finished; a new run
    starts from its round-0 model instead of training its own (`adopt_round0`)."""
    out = Path(out)
    done = _start(out, config)
    adopted = done < 0 and round0_from is not None and adopt_round0(Path(round0_from), out, config)
    if done >= 0:
        model = load_model(config.model, adapter=_round_dir(out, done) / "adapter", device=device)
        found = _load_found(out, done, model)
        stop_reason = read_json(out / STATE_FILE).get("stop_reason")
    elif adopted:  # read from the source: under a multi-process launch only rank 0 copies it
        model = load_model(config.model, adapter=_round_dir(Path(round0_from), 0) / "adapter", device=device)
        found, stop_reason = DirectionSet(), None
    else:
        model, found, stop_reason = fresh_lora_model(config.sft, device), DirectionSet(), None
    examples = _examples(model, out, config, progress)
    rounds = tqdm(range(done + 1, config.rounds + 1), desc=f"{config.method} rounds", disable=not progress)
    for k in rounds if stop_reason is None else ():
        folder, clock = _round_dir(out, k), Stopwatch(digits=1)
        trained_elsewhere = k == 0 and adopted
        notes = {"round0_from": str(round0_from)} if trained_elsewhere else {}
        if trained_elsewhere:
            pass  # the adopted round-0 model, loaded above
        elif (folder / TRAINING_FILE).exists():
            # an earlier attempt trained this round and stopped after it (in the direction search or the checks):
            # its model, saved before the training record, is the one training again would give
            model = load_model(config.model, adapter=folder / "adapter", device=device)
        else:
            train = round_training(config, k)
            result = train_lora(model, examples, train, safety_interventions=safety_interventions(config, found, train.seed),
                                progress=progress, on_step=on_step)
            save_adapter(model, folder / "adapter", train.lora)
            write_json(folder / TRAINING_FILE, result.to_dict())
        clock.lap("train")
        if config.method != "sft":
            direction, stop_reason, found_notes = _next_direction(model, config, found, out, k, progress)
            notes.update(found_notes)
            clock.lap("direction")
            if direction is not None:
                direction = dataclasses.replace(direction, round=k)  # found at the end of round k
                found = found.append(direction) if config.method == "failclosed" else DirectionSet([direction])
        if len(found):
            save_directions(found, folder / "directions", model.identity())
        checks = _round_metrics(model, config, found, examples)
        clock.lap("checks")
        rates = {name: m.rate if isinstance(m, JudgedResponses) else m for name, m in checks.items()}
        metrics = {"round": k, "stop_reason": stop_reason, "n_directions": len(found), **notes,
                   "round_checks": config.round_checks, "checked_on": "val", **{name: rate.value for name, rate in rates.items()},
                   "ci": {name: rate.to_dict() for name, rate in rates.items()}, "timings_s": clock.timings}
        write_json(folder / "metrics.json", metrics)
        write_json(out / STATE_FILE, {"config": config.to_dict(), "completed_round": k, "stop_reason": stop_reason})
        done = k
        if on_round is not None:
            on_round(k, metrics)
        if stop_reason is not None:
            break
    if not evaluate:
        return {"rounds_completed": done, "stop_reason": stop_reason, "n_directions": len(found)}
    summary = _finish(model, config, out, found, done, stop_reason, progress, data_dir)
    if merge and is_main_process():
        export_checkpoint(config.model, out / "final" / "merged", adapter=out / "final" / "adapter", overwrite=True)
    return summary


def _reference_note(out: Path) -> dict:
    """How the first direction's reference was chosen (which selection rules), when RDO made one."""
    path = _round_dir(out, 0) / RDO_FOLDER / "reference.json"
    return {"rdo_reference": read_json(path)} if path.exists() else {}


def _load_found(out: Path, k: int, model: ChatModel) -> DirectionSet:
    folder = _round_dir(out, k) / "directions"
    return load_directions(folder, model) if folder.exists() else DirectionSet()


def reference_answers(model: ChatModel, prompts: list[str], max_new_tokens: int,
                      log_file: str | Path | None = None) -> list[str]:
    """Greedy answers of the frozen reference (the model with its adapters switched off). `log_file`: keep
    them there (`ScoreLog`); any later call for the same base model, prompts and budget reads them back,
    e.g. when the demo evaluates its SFT model after the fail-closed one."""
    def answer() -> list[str]:
        with adapters_disabled(model.hf_model):
            return generate(model, prompts, GenerationConfig(max_new_tokens=max_new_tokens), progress=False)

    log = ScoreLog(log_file, digest("reference answers", model.identity(), prompts, max_new_tokens))
    return log.value("answers", answer)


def _finish(model: ChatModel, config: AlignConfig, out: Path, found: DirectionSet, done: int, stop_reason,
            progress, data_dir: str | Path | None = None) -> dict:
    """Copy the last round to `final/` and write the evaluation of the final model on test prompts."""
    final = out / "final"
    last = _round_dir(out, done)
    for part in ("adapter", "directions"):
        if (last / part).exists() and is_main_process():
            with atomic_folder(final / part) as tmp:
                shutil.copytree(last / part, tmp, dirs_exist_ok=True)
    summary = {"method": config.method, "mode": config.mode, "model": config.model,
               "rounds_completed": done, "stop_reason": stop_reason, "n_directions": len(found),
               "direction_layers": [d.layer for d in found], "direction_methods": [d.method for d in found],
               **_reference_note(out),
               **evaluate_final(model, config, found, out / "final" / "adaptive", progress, reference_log=out / REFERENCE_FILE)}
    if data_dir is not None:
        summary["public"] = public_columns(model, data_dir, seed=config.sft.seed, max_new_tokens=config.eval_tokens,
                                           progress=progress)
    write_json(out / SUMMARY_FILE, summary)
    return summary


def evaluate_final(model: ChatModel, config: AlignConfig, found: DirectionSet, adaptive_dir: Path | None,
                   progress: bool, *, reference_log: Path | None = None) -> dict:
    """The final summary figures on held-out built-in TEST prompts. The adaptive attacker's search is saved
    to `adaptive_dir` (when `config.attacker` is set and `adaptive_dir` is not None); the reference answers
    the perplexity is measured on are kept in `reference_log` (`reference_answers`)."""
    test = _built_in(config, ("harmful", "harmless", "borderline"), "test")
    rates = {f"refusal_{kind}": judged for kind, judged in _refusals(model, config, test).items()}
    each = [_refusal(model, config, test["harmful"], found[i : i + 1]) for i in range(len(found))]
    if len(found):  # one direction: ablating it alone is ablating them all
        rates["refusal_harmful_all_ablated"] = each[0] if len(found) == 1 else _refusal(model, config, test["harmful"], found)
    adaptive_rates, adaptive_note = {}, {}
    if config.attacker is not None:
        # The adaptive attacker: its own prompts and search, a direction per KL budget on harmless prompts; the
        # headline is harmful refusal (and compliance) at its report budget, the whole budget curve is kept.
        attack = adaptive_attack(model, test["harmful"], config.attacker, max_new_tokens=config.attacker_tokens,
                                 progress=progress, log_file=None if adaptive_dir is None else adaptive_dir / PROGRESS_FILE)
        if adaptive_dir is not None:
            save_search(attack.search, adaptive_dir, model.identity())
        report = attack.report
        adaptive_rates = {"refusal_harmful_adaptive_ablated": report.refusal,
                          "compliance_harmful_adaptive_ablated": report.compliance}
        adaptive_note = {"adaptive_attack": attack.to_dict(responses=False),
                         "adaptive_direction_layer": report.direction.layer if report.direction is not None else None}
        if report.direction is None:
            adaptive_note["adaptive_failure"] = attack.search.reason or f"no candidate within KL {report.kl_budget}"
    answers = reference_answers(model, test["harmless"], config.eval_tokens, reference_log)
    ppl = perplexity(model, test["harmless"], answers, complete=False)
    return {
        "refusal_harmful_all_ablated": None, "refusal_harmful_adaptive_ablated": None,  # unless measured below
        **{name: judged.rate.value for name, judged in rates.items()},
        **{name: rate.value for name, rate in adaptive_rates.items()},
        "refusal_harmful_each_ablated": [judged.rate.value for judged in each],
        **adaptive_note,
        "perplexity_harmless": ppl.value,
        "ci": {**{name: judged.rate.to_dict() for name, judged in rates.items()},
               **{name: rate.to_dict() for name, rate in adaptive_rates.items()},
               "refusal_harmful_each_ablated": [judged.rate.to_dict() for judged in each],
               "perplexity_harmless": ppl.to_dict()},
    }


def format_align_summary(summary: dict) -> str:
    """The printed table of `failclosed align`."""
    each = ", ".join(f"{r:.2f}" for r in summary["refusal_harmful_each_ablated"]) or "-"
    rows = [("harmful refusal", summary["refusal_harmful"]), ("harmless refusal", summary["refusal_harmless"]),
            ("borderline refusal", summary["refusal_borderline"]),
            ("harmful, all found directions ablated", summary["refusal_harmful_all_ablated"]),
            ("harmful, adaptive attacker's direction ablated", summary["refusal_harmful_adaptive_ablated"]),
            ("  compliance under that ablation", summary.get("compliance_harmful_adaptive_ablated")),
            ("perplexity of reference answers", summary["perplexity_harmless"])]
    lines = [f"method {summary['method']}: {summary['rounds_completed']} round(s) completed, "
             f"{summary['n_directions']} direction(s) from layers {summary['direction_layers']}"]
    lines += [f"  {label:<40}{'-' if value is None else f'{value:.2f}':>8}" for label, value in rows]
    lines.append(f"  {'harmful, each direction ablated alone':<40}{each:>8}")
    if summary.get("public"):
        lines.append(format_public_columns(summary["public"]))
    if summary["stop_reason"]:
        lines.append(f"stopped early: {summary['stop_reason']}")
    return "\n".join(lines)
