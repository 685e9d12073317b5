"""How many mutually orthogonal refusal directions each model has: RDO run k times toward the same targets,
each run orthogonal to the directions before it (`failclosed_interp.orthogonal_rdo`).

    python benchmarks/orthogonal_directions.py --reference-adapter RUN/align/round_0/adapter \\
        --adapter sft=RUN/align/round_0/adapter --adapter failclosed=RUN/align/final/adapter \\
        [--k 10] [--setting demo] [--out results/orthogonal_directions.json]

The reference (addition layer and strength, and the RDO targets) comes from the reference adapter (the SFT
model) as the loop makes it after round 0 (`rdo_timing.reference_direction`); every model is searched toward
those same targets, on built-in TRAIN prompts, and each direction is checked on built-in VALIDATION prompts
(mean refusal score with it ablated, and with it added). The JSON is written after every direction and the
directions so far are kept in WORK/NAME/; a run started again with the same settings skips the models it has
finished and continues an unfinished one from its last direction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rdo_timing import SETTINGS, machine, reference_direction

from failclosed_interp.artifacts import read_json, write_json
from failclosed_interp.directions import DirectionSet, load_directions, save_directions
from failclosed_interp.models import EMBEDDED_MODEL, load_model
from failclosed_interp.orthogonal_rdo import orthogonal_directions
from failclosed_interp.rdo import rdo_targets


def named_adapter(text: str) -> tuple[str, Path]:
    name, equals, path = text.partition("=")
    if not equals or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=DIR, e.g. sft=runs/demo/align/round_0/adapter")
    return name, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--reference-adapter", type=Path, required=True, help="the SFT model's adapter: reference and targets")
    parser.add_argument("--adapter", type=named_adapter, action="append", required=True, help="NAME=DIR, repeatable")
    parser.add_argument("--k", type=int, default=10, help="directions per model")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="demo", help="RDO settings (rdo_timing.SETTINGS)")
    parser.add_argument("--n-train", type=int, default=64, help="built-in TRAIN prompts of each kind for the targets")
    parser.add_argument("--n-val", type=int, default=16, help="built-in VALIDATION prompts of each kind for the checks")
    parser.add_argument("--out", type=Path, default=Path("results/orthogonal_directions.json"))
    parser.add_argument("--work", type=Path, default=Path("runs/orthogonal_directions"), help="folder for the DIM search")
    args = parser.parse_args()
    config = SETTINGS[args.setting]
    settings = {"model": args.model, "reference_adapter": str(args.reference_adapter), "k": args.k,
                "setting": args.setting, "n_train": args.n_train, "n_val": args.n_val}
    result = read_json(args.out) if args.out.exists() else {}
    if result.get("settings") != settings:
        result = {"settings": settings, "machine": machine(), "models": {}}
    reference_model = load_model(args.model, adapter=args.reference_adapter)
    jc, selection, _ = reference_direction(reference_model, args.work / "search", args.n_train, args.n_val)
    reference, tokens = selection.direction, selection.refusal_tokens
    targets = rdo_targets(reference_model, jc.prompts("harmful", "train"), jc.prompts("harmless", "train"), reference,
                          config, refusal_tokens=tokens, progress=False)
    result["reference"] = {"layer": reference.layer, "norm": reference.norm, "rules": selection.rules(),
                           "n_pairs": len(targets), "targets": targets.filtered}
    harmful, harmless = jc.prompts("harmful", "val"), jc.prompts("harmless", "val")
    for name, adapter in args.adapter:
        if result["models"].get(name, {}).get("finished"):
            continue
        model = load_model(args.model, adapter=adapter)
        row = result["models"].setdefault(name, {"adapter": str(adapter), "checks": [], "finished": False})
        saved = args.work / name / "directions"
        resume = None
        if row["checks"] and row["adapter"] == str(adapter) and saved.exists():
            earlier = load_directions(saved, model)
            if len(earlier) == len(row["checks"]):
                resume = (earlier, tuple(row["checks"]))
        if resume is None:
            row.update({"adapter": str(adapter), "checks": []})
        found_so_far = list(resume[0]) if resume is not None else []

        def save(i: int, check: dict, direction) -> None:
            found_so_far.append(direction)
            save_directions(DirectionSet(tuple(found_so_far)), saved, model.identity())
            row["checks"].append(check)
            write_json(args.out, result)
            print(name, check, flush=True)

        found = orthogonal_directions(model, reference, targets, tokens, harmful, harmless, k=args.k, config=config,
                                      on_direction=save, resume=resume)
        row.update({**found.to_dict(), "adapter": str(adapter), "finished": True})
        write_json(args.out, result)


if __name__ == "__main__":
    main()
