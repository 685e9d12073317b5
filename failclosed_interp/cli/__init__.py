"""`failclosed <command>`: argument parsing only; each command calls one library function. One module per
command group builds its parsers; `options` holds what they share. A flag left out keeps the config's
default, and a library error that names a config field is shown with the flag that sets it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from failclosed_interp.cli import attacks, directions, judge, reproduce, train
from failclosed_interp.cli.options import flag_names
from failclosed_interp.models import load_defaults
from failclosed_interp.scoring import NoRefusals


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `failclosed` command."""
    parser = argparse.ArgumentParser(prog="failclosed", description="Refusal directions and fail-closed alignment")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (train, directions, attacks, judge, reproduce):
        group.add_parsers(sub)
    for command in sub.choices.values():  # "--gcg-width N", not the config path its dest names
        for action in command._actions:
            if action.option_strings and action.metavar is None and action.nargs != 0 and action.choices is None:
                action.metavar = action.option_strings[-1].lstrip("-").upper().replace("-", "_")
    return parser


@contextlib.contextmanager
def _quiet_unless_main_process():
    """Under a multi-process launch only rank 0 prints results; other ranks keep stderr for errors."""
    from failclosed_interp.distributed import is_main_process

    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def main(argv: list[str] | None = None) -> int:
    """Run one `failclosed` command; returns the exit status (2 with a one-line message for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a flag argparse refused (2, message already printed)
        return stop.code
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        with _quiet_unless_main_process(), load_defaults(getattr(args, "device", None), getattr(args, "dtype", None)):
            args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        command = parser._subparsers._group_actions[0].choices[args.command]
        message = flag_names(command, str(err))
        if isinstance(err, NoRefusals):
            message += " (train one with `failclosed sft --out DIR`, then pass --adapter DIR/adapter)"
        print(f"failclosed {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


__all__ = ["build_parser", "main"]
