"""The grid's recipes in one table: what each trains (an `align` recipe and its overrides), its part in
choosing the default recipe, whether it trains on every seed, and its label on the results page.

Adding a recipe to the grid is one row here; the grid, the selection rule and the page read this table."""

from __future__ import annotations

from dataclasses import dataclass

from failclosed_interp.rdo_config import RDOConfig

ROLES = ("baseline", "candidate", "comparison")


@dataclass(frozen=True)
class GridRecipe:
    """One recipe of the grid. `align_recipe` and `overrides`: the `align.recipe(...)` it starts from and the
    AlignConfig fields it changes. `role`: "baseline" (what the selection rule and the paper's claims compare
    with), "candidate" (competes to be the default recipe) or "comparison" (reported, never chosen).
    `every_seed`: trained on every seed with `reproduce --later-seeds all` (else on the first seed alone).
    `required`: a model the grid reports whatever the choice (the baselines, the paper's recipe), audited and
    attacked before the candidates that were not chosen (the chosen one joins them)."""

    align_recipe: str
    overrides: dict
    role: str
    every_seed: bool
    required: bool
    label: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"a grid recipe's role must be one of {ROLES}, got {self.role!r}")


# Run order within a seed: the baseline and the candidates for the default recipe first, the paper's (up to 10
# rounds, the longest) after the first two, then the broad-search ones (the last ones added), refat (a baseline
# no choice waits for) last. The baselines train with the method recipe's data and steps, named as such so that
# switching `align.DEFAULT_RECIPE` leaves them (and their results) as they are. sft never runs RDO: its settings
# stay those it was trained with (so its results keep counting) whatever method's RDO is.
GRID_RECIPES: dict[str, GridRecipe] = {
    "sft": GridRecipe("method", {"method": "sft", "rdo": RDOConfig()}, "baseline", True, True, "sft (standard alignment)"),
    "method": GridRecipe("method", {}, "candidate", True, False, "the method's recipe"),
    "project": GridRecipe("project", {}, "candidate", True, False, "this project's recipe"),
    "paper": GridRecipe("paper", {}, "candidate", False, True, "paper's recipe"),
    "broad": GridRecipe("broad", {}, "candidate", True, False, "this project's broad-search recipe"),
    "broad-subsets": GridRecipe("broad-subsets", {}, "candidate", True, False,
                                "this project's broad search with random-subset ablation"),
    "refat": GridRecipe("method", {"method": "refat"}, "comparison", False, True, "refat (ReFAT baseline)"),
}
(BASELINE_RECIPE,) = (name for name, r in GRID_RECIPES.items() if r.role == "baseline")
CANDIDATE_RECIPES = tuple(name for name, r in GRID_RECIPES.items() if r.role == "candidate")
SEEDED_RECIPES = tuple(name for name, r in GRID_RECIPES.items() if r.every_seed)
