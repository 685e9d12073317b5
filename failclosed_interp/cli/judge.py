"""`failclosed judge` and `judge-check`: label responses in a file; check the three-way judge on XSTest."""

from __future__ import annotations

from pathlib import Path

from failclosed_interp.cli.options import command
from failclosed_interp.judges import DEFAULT_JUDGE, JUDGE_NAMES


def cmd_judge(args) -> None:
    """`failclosed judge`."""
    from failclosed_interp.artifacts import write_json
    from failclosed_interp.judge_files import judge_file
    from failclosed_interp.judges import judge_by_name

    result = judge_file(args.input, args.prompt_column, args.response_column, judge_by_name(args.judge))
    write_json(args.out, result)
    print(f"{result['counts']} over {result['n']} rows; refusal {result['refusal_rate']['value']:.2f}, "
          f"compliance {result['compliance_rate']['value']:.2f}; written to {args.out}")


def cmd_judge_check(args) -> None:
    """`failclosed judge-check`."""
    from failclosed_interp.artifacts import write_json
    from failclosed_interp.judge_check import judge_check, results_markdown

    results = judge_check(args.data)
    write_json(args.out, results)
    print(results_markdown(results) + f"\nwritten to {args.out}")


def add_parsers(sub) -> None:
    """Add this group's commands to the subparsers `sub`."""
    p = command(sub, "judge", "label each (prompt, response) row of a file: refusal / compliance / non-answer", cmd_judge)
    p.add_argument("--input", type=Path, required=True, help=".csv, .json or .jsonl table of prompts and responses")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--response-column", default="response")
    p.add_argument("--judge", choices=JUDGE_NAMES, default=DEFAULT_JUDGE)
    p.add_argument("--out", type=Path, required=True, help="output JSON: per-row labels and totals")

    p = command(sub, "judge-check", "choose the three-way judge's thresholds on half of XSTest's labelled completions "
                                    "and report agreement on the other half", cmd_judge_check)
    p.add_argument("--data", type=Path, required=True, help="folder holding xstest_v2_completions_labeled.csv")
    p.add_argument("--out", type=Path, default=Path("results/judge_xstest.json"))
