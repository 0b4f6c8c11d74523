"""``mf weights check DIR``: the key-coverage report of a weights directory (official layout or ours)."""
from __future__ import annotations

import logging

from mf_model.config import PRESETS

log = logging.getLogger("mf.weights")


def register(sub) -> None:
    p = sub.add_parser("weights", help="inspect model weights")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True
    c = wsub.add_parser("check", help="load a weights directory/URI and print its key-coverage report")
    c.add_argument("weights", help="official layout dir, official-style YAML, or our format (path or fsspec URI)")
    c.add_argument("--estimator", choices=["shared", "official"], default="shared")
    c.set_defaults(func=check)
    s = wsub.add_parser("save-preset", help="write a preset with seeded random weights in our format")
    s.add_argument("preset", choices=PRESETS)
    s.add_argument("out", help="output directory or fsspec URI")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=save_preset)


def check(args) -> int:
    from mf_model import WeightsError, load_model

    try:
        model = load_model(args.weights, estimator=args.estimator)
    except WeightsError as exc:
        print(str(exc))
        return 1
    print(model.coverage.text() if model.coverage else "weights: OK")
    print(f"identity: {model.identity()}")
    return 0


def save_preset(args) -> int:
    from mf_model import load_model

    load_model(preset_name=args.preset, seed=args.seed).save(args.out)
    log.warning("wrote %s preset (random weights, seed %d) to %s", args.preset, args.seed, args.out)
    return 0
