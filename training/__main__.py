"""Command line: `python -m training MODEL [MODEL ...] | all [--quick] [--out DIR | --publish MODELS_DIR]
[--mnist-dir DIR] [--resume]`, and `python -m training fit --data PATH --name NAME ...` (your own data:
`training/fit/`, `python -m training fit --help`).

`all` is the digit and sequence models (minutes); `photo` trains for hours and is named on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training import registry
from training.data.errors import DataError
from training.pipeline import make_config, run
from training.report import write_models_readme
from training.spec import DataOptions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, export and card autoencoders.",
        epilog="Your own data (vectors, images, series): python -m training fit --help",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help=f"one or more of: {', '.join(registry.MODELS)}, or all (= {', '.join(registry.ALL)})",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--out", type=Path, default=Path("models"), help="models directory; replaces MODEL/ there (default: models/)"
    )
    out.add_argument(
        "--publish",
        type=Path,
        metavar="MODELS_DIR",
        help="write each model as its next version, MODELS_DIR/MODEL/<n>/, renamed into place when complete "
        "(a running service in poll mode picks it up; nothing already there is touched)",
    )
    p.add_argument("--mnist-dir", type=Path, help="directory with the full MNIST IDX files (used whenever given)")
    p.add_argument("--quick", action="store_true", help="tiny subset, one epoch: exercises the pipeline in seconds")
    p.add_argument("--seed", type=int, default=0, help="data split seed")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the model's checkpoint if there is one (models with checkpoints: photo)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fit"]:  # `python -m training fit ...`: your own data (training/fit/)
        from training.fit.cli import main as fit_main

        return fit_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("training").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    names = list(registry.ALL) if args.models == ["all"] else args.models
    try:
        for name in names:
            registry.get(name)
        if args.mnist_dir is not None and not args.mnist_dir.is_dir():
            raise DataError(f"--mnist-dir {args.mnist_dir}: no such directory")
        overrides = dict(item.split("=", 1) for item in args.set)
        if args.resume:
            for name in names:
                if not hasattr(registry.get(name).Config, "resume"):
                    raise ValueError(f"{name} has no checkpoints to resume from (--resume)")
        data = DataOptions(mnist_dir=args.mnist_dir, seed=args.seed)
        summary = {}
        for name in names:
            cfg = make_config(name, args.quick, overrides if len(names) == 1 else None)
            if args.resume:
                cfg.resume = True
            card = run(name, args.publish or args.out, cfg, data, publish=args.publish is not None)
            summary[name] = {
                "version": card["version"],
                "seconds": card["training"]["seconds"],
                "gates": [(g["name"], g["passed"]) for g in card["metrics"]["gates"]],
            }
    except (registry.UnknownModelError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.publish is None:
        write_models_readme(args.out)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
