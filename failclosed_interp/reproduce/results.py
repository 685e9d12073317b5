"""A `failclosed reproduce` results folder read back: the finished experiments' results files, in recipe and
seed order, and which experiments of the folder's grid have not finished yet; and a small quick grid to try
the figures on without a real run; the default recipe chosen from its validation results."""

from __future__ import annotations

from pathlib import Path

from failclosed_interp.artifacts import read_json
from failclosed_interp.configs import config_from_dict
from failclosed_interp.reproduce.grid import Experiment, GridConfig, pending
from failclosed_interp.reproduce.recipes import GRID_RECIPES
from failclosed_interp.reproduce.records import GRID_FILE, finished_records, load_records
from failclosed_interp.reproduce.runner import current_grid, evaluation_row, run_grid
from failclosed_interp.reproduce.selection import Choice, SelectionRule, choose_recipe
from failclosed_interp.stats import RateEstimate


DEMO_MODELS = {"sft": "sft", "failclosed": "fail-closed demo"}  # the demo's audit folders -> recipe names in figures
DEMO_ATTACKS = "attacks"  # `failclosed evaluate --out DEMO/attacks` with the demo's models as rows `sft` and `failclosed`


def load_results(folder: str | Path) -> dict[str, dict]:
    """Every finished experiment's results file in `folder` (e.g. `results/grid`), by experiment name; for a
    `failclosed demo` run folder, its two audits in the same form (`demo_results`)."""
    folder = Path(folder)
    if (folder / "audit").is_dir() and (folder / "summary.json").exists():
        return demo_results(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no results folder at {folder}; run `failclosed reproduce --results ROOT` "
                                f"(it writes ROOT/grid/) or pass the folder that holds grid.json")
    return load_records(folder)


def demo_results(folder: str | Path) -> dict[str, dict]:
    """A finished `failclosed demo` run as results: per model (the SFT one and the fail-closed one) its audit,
    and the audit's adaptive attack (if it ran) as a training run's final evaluation records it. Attack runs
    are not part of the demo; the attack figure draws them from `DEMO/attacks/results.json` when you run
    them there: `failclosed evaluate --no-base --adapter sft=DEMO/align/round_0/adapter --adapter
    failclosed=DEMO/align/final/adapter --out DEMO/attacks`."""
    folder = Path(folder)
    summary = read_json(folder / "summary.json")
    seed = read_json(folder / "config.json").get("seed", 0) if (folder / "config.json").exists() else 0
    attacks_file = folder / DEMO_ATTACKS / "results.json"
    attacked = read_json(attacks_file) if attacks_file.exists() else {"models": {}}
    out = {}
    for name, recipe in DEMO_MODELS.items():
        path = folder / "audit" / name / "audit.json"
        if not path.exists():
            continue
        audit = read_json(path)
        kinds = {"audit": audit}
        if audit.get("adaptive_attack"):
            kinds["align"] = {"adaptive_attack": audit["adaptive_attack"]}
        if name in attacked["models"]:
            kinds["attacks"] = evaluation_row(attacked, name)
        for kind, result in kinds.items():
            experiment = f"{kind}-{name}-s{seed}"
            out[experiment] = {"experiment": {"name": experiment, "kind": kind, "recipe": recipe, "seed": seed,
                                              "source": f"failclosed demo ({summary['model']})"}, "result": result}
    if not out:
        raise FileNotFoundError(f"{folder} holds no demo audit yet (audit/sft/audit.json, audit/failclosed/audit.json); "
                                f"let `failclosed demo --out {folder}` finish first")
    return out


def of_kind(results: dict[str, dict], kind: str) -> list[dict]:
    """The finished experiments of one kind ("align", "audit", "attacks"), in recipe order, then by seed."""
    order = list(GRID_RECIPES)
    return sorted((r for r in results.values() if r["experiment"]["kind"] == kind),
                  key=lambda r: (order.index(r["experiment"]["recipe"]) if r["experiment"]["recipe"] in order
                                 else len(order), r["experiment"]["seed"]))


def grid_config(folder: str | Path) -> GridConfig | None:
    """The config of the grid the folder's `grid.json` names; None when the folder holds none."""
    grid_file = Path(folder) / GRID_FILE
    return config_from_dict(GridConfig, read_json(grid_file)["grid"]) if grid_file.exists() else None


def grid_experiments(folder: str | Path, results: dict[str, dict]) -> list[Experiment]:
    """Every experiment of the folder's grid as its `results` make it (`runner.current_grid`: with the later
    seeds of the recipe validation chose on the first seed, once it has); empty when the folder holds none."""
    config = grid_config(folder)
    return current_grid(config, results)[0] if config is not None else []


def unfinished(folder: str | Path, results: dict[str, dict], kind: str | None = None) -> list[str]:
    """Experiments of the folder's grid (`grid.json`) with no results file that counts for them (`records`:
    the same work, and for a measurement, on the model whose results count now), then those the default
    recipe's choice will add (named with `chosen`, `grid.pending`); only those of `kind` when given. Empty
    when the folder holds no grid.json."""
    config = grid_config(folder)
    if config is None:
        return []
    grid, choice = current_grid(config, results)
    finished = finished_records(grid, results)
    names = [e.name for e in grid if e.name not in finished] + pending(config, choice.recipe)
    return [name for name in names if kind is None or name.split("-")[0] == kind]


def counting(folder: str | Path, results: dict[str, dict]) -> dict[str, dict]:
    """The results files that count for the folder's grid (`records.finished_records`: the same work, on the
    model that counts now), by experiment name; all of them when the folder holds no grid.json."""
    config = grid_config(folder)
    return results if config is None else finished_records(current_grid(config, results)[0], results)


def current(folder: str | Path, results: dict[str, dict], kind: str) -> list[dict]:
    """The finished experiments of one kind whose results files count for the folder's grid (files of another
    version of an experiment, or measured on another model, left out), in recipe and seed order."""
    stale = set(unfinished(folder, results, kind))
    return [r for r in of_kind(results, kind) if r["experiment"]["name"] not in stale]


def default_choice(folder: str | Path, results: dict[str, dict]) -> Choice:
    """The default recipe the folder's grid chooses from its validation results (`runner.current_grid`;
    `reproduce.selection`); without a grid.json, `SelectionRule()` over every validation result present."""
    config = grid_config(folder)
    if config is None:
        return choose_recipe(of_kind(results, "validation"), None, SelectionRule())
    return current_grid(config, results)[1]


def model_label(result: dict) -> str:
    """How figures name the model an experiment trained or studied: recipe and training seed."""
    return f"{result['experiment']['recipe']} s{result['experiment']['seed']}"


rate = RateEstimate.from_dict  # a rate as results files store it, without its per-item values


def quick_results(folder: str | Path, runs: str | Path, *, recipes: tuple[str, ...] = ("sft", "project"),
                  seeds: tuple[int, ...] = (0,)) -> Path:
    """Run (or resume) a quick grid on the tiny random model into `folder` (heavy artifacts in `runs`) and
    return `folder`. It checks the plumbing, not the science: the tiny model learns no refusal to audit."""
    run_grid(GridConfig(quick=True, recipes=recipes, seeds=seeds, attack_seeds=seeds), runs, folder,
             progress=False, log=lambda _: None)
    return Path(folder)
