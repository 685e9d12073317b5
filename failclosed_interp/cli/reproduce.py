"""`failclosed reproduce`: the documented experiment grid and the results page written from it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from failclosed_interp.cli.options import command, data_dir_flag, device_flags, given
from failclosed_interp.reproduce.grid import LATER_SEEDS, GridConfig


def cmd_reproduce(args) -> None:
    """`failclosed reproduce`."""
    from failclosed_interp.reproduce import format_status, grid_status, run_grid, write_results_page
    from failclosed_interp.reproduce.page import GRID_DIR
    from failclosed_interp.reproduce.runner import GridFailures

    seeds = {"seeds": args.seeds, "attack_seeds": args.seeds[:1]} if hasattr(args, "seeds") else {}
    config = GridConfig(quick=args.quick, **seeds, **given(args, "later_seeds"))
    if args.status:
        print(format_status(grid_status(config, args.runs, args.results / GRID_DIR, data_dir=args.data_dir)))
        return
    if args.keep_started:
        from failclosed_interp.reproduce.store import keep_started

        for kept in keep_started(args.runs, args.results / GRID_DIR):
            print(f"kept {kept}")
        return
    failures = None
    if not args.page_only:
        try:
            run_grid(config, args.runs, args.results / GRID_DIR, data_dir=args.data_dir)
        except GridFailures as err:
            failures = err
    for path in write_results_page(args.results, args.page):  # what did finish is on the page either way
        print(f"wrote {path}")
    if failures is not None:
        print(f"failclosed reproduce: {failures}", file=sys.stderr)
        raise SystemExit(1)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 0,1,2") from None


def add_parsers(sub) -> None:
    """Add this group's commands to the subparsers `sub`."""
    p = command(sub, "reproduce", "run the documented experiment grid (resumable) and regenerate docs/results.md",
                cmd_reproduce)
    p.add_argument("--quick", action="store_true", default=False,
                   help="the whole grid on a tiny random model with tiny budgets (minutes)")
    p.add_argument("--seeds", type=_seeds, help="training seeds (default 0,1,2): every recipe trains on the first")
    p.add_argument("--later-seeds", choices=LATER_SEEDS,
                   help="which recipes train on the later seeds: 'chosen' (default) the sft baseline and the recipe "
                        "validation chooses on the first seed; 'all' the baseline and every candidate, the choice then "
                        "using seed means")
    p.add_argument("--runs", type=Path, default=Path("runs/reproduce"), help="heavy artifacts (adapters, caches)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="results root: one small JSON per finished experiment in RESULTS/grid/")
    p.add_argument("--page", type=Path, default=Path("docs/results.md"), help="the results page written from --results")
    p.add_argument("--page-only", action="store_true", default=False, help="only regenerate the page from the results files")
    p.add_argument("--status", action="store_true", default=False,
                   help="print what has finished, what is started and what is left, with the expected time; run nothing")
    p.add_argument("--keep-started", action="store_true", default=False,
                   help="copy the resumable state of every training run still in progress (its last round and the "
                        "scores of its searches so far) into RESULTS/grid/models/, e.g. before a machine goes; run nothing")
    data_dir_flag(p)
    device_flags(p)
