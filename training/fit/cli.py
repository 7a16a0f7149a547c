"""`python -m training fit --data PATH --name NAME ...`: fit an autoencoder to your own data and write (or publish)
it as a model the service serves. `python -m training fit --help` explains every option."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from training.data.errors import DataError
from training.export import ExportError
from training.fit import distributed
from training.fit.options import KINDS, FitOptions
from training.fit.progress import Progress
from training.fit.summary import Fitted, training_section

EXAMPLES = """\
examples:
  # a table (CSV with a header; all numeric columns): dense autoencoder + PCA baseline, served as models/wine/1/
  python -m training fit --data wine.csv --name wine --publish models
  # choose columns, impute missing values with the training median, a 4-number code
  python -m training fit --data sensors.csv --name sensors --columns temp,rpm,3,4 --impute median --latent 4
  # a .npy array [rows, columns]; export PCA instead when the network does not beat it (any kind of data)
  python -m training fit --data x.npy --name x --pca-if-better --out runs/fit
  python -m training fit --data photos/ --name thumbs-pca --size 32 --pca-if-better
  # a folder of PNG/JPEG images, 32x32 colour, convolutional
  python -m training fit --data photos/ --name thumbs --size 32 --channels 3 --arch conv
  # series: one CSV per series, or a long table with an id column, or sktime's .ts; a forecaster with --forecast
  python -m training fit --data power.ts --name power --window 24 --stride 4
  python -m training fit --data readings.csv --id-column machine --name machines --forecast 1
  # series rows ordered by a timestamp column (regular steps; the step is recorded), gaps interpolated in time
  python -m training fit --data solar.csv --time-column datetime_gmt --impute linear --name solar --forecast 1
  # two processes (DDP, gloo on CPU): only rank 0 writes
  torchrun --nproc-per-node 2 -m training fit --data wine.csv --name wine --out runs/ddp

exit status: 0 when the model is written, 2 for bad data or options (nothing is written), 1 for other failures.
"""


def _floats(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.replace("/", ",").split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("three numbers: train,validation,test (e.g. 70,15,15 or 0.7,0.15,0.15)")
    total = sum(parts)
    if total <= 0 or any(p <= 0 for p in parts):
        raise argparse.ArgumentTypeError("three positive numbers")
    return parts[0] / total, parts[1] / total, parts[2] / total


def _names(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training fit",
        description="Fit an autoencoder to your own data (vectors, images or series), export it to ONNX with its "
        "model card and write it where the service serves it. Every run also measures PCA with the same code size "
        "on the same test split and says plainly whether the network beats it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, metavar="PATH", help="the data file or folder (see --kind)")
    p.add_argument(
        "--name", required=True, help="the model's name: its folder and URL, e.g. wine (a-z, 0-9, '.', '_', '-')"
    )
    p.add_argument(
        "--kind",
        choices=KINDS,
        help="what the data is; inferred when left out: .npy/.npz/.csv/.tsv -> vectors; a folder of PNG/JPEG or "
        "IDX image files -> images; .ts, a folder of CSVs, or --id-column/--window/--forecast -> series",
    )
    p.add_argument(
        "--latent",
        type=int,
        metavar="K",
        help="numbers in the code (the bottleneck); default: a quarter of the columns for vectors (e.g. 3 for 13), "
        "values/8 (2..32) for images, a window's values/8 (2..16) for series",
    )
    p.add_argument(
        "--hidden",
        type=int,
        help="hidden width: dense vectors 4 x columns (16..256), dense images values/3 (64..512), conv images the "
        "first stage's channels (16), LSTMs their units (32)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        type=Path,
        default=Path("models"),
        metavar="DIR",
        help="write the model to DIR/NAME/ (default: models/); refuses to replace an existing folder without --replace",
    )
    where.add_argument(
        "--publish",
        type=Path,
        metavar="MODELS_DIR",
        help="write the model as the next version MODELS_DIR/NAME/<n>/, renamed into place when complete (a running "
        "service polling MODELS_DIR picks it up; nothing already there is touched), e.g. --publish models",
    )
    p.add_argument("--replace", action="store_true", help="with --out: replace DIR/NAME/ if it exists")

    v = p.add_argument_group("vectors (.npy, .npz, .csv, .tsv, optionally .gz)")
    v.add_argument(
        "--columns",
        type=_names,
        metavar="A,B,...",
        help="the numeric columns to learn from, by header name or 0-based index, e.g. --columns alcohol,3,5 "
        "(default: every column; a text cell is an error naming its line and column)",
    )
    v.add_argument("--ignore-columns", type=_names, metavar="A,B,...", help="columns to leave out, e.g. an id or label")
    v.add_argument("--array", metavar="NAME", help=".npz: the array to read (default: the only one)")
    v.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        default="auto",
        help="CSV/TSV first line: auto = a header when none of its cells is a number (default)",
    )
    v.add_argument("--delimiter", help="CSV/TSV cell separator (default: ',' for .csv, tab for .tsv)")
    v.add_argument(
        "--impute",
        choices=("mean", "median", "linear"),
        help="fill missing cells (empty, NA, NaN; '?' in .ts) instead of refusing them: vectors take mean or median "
        "(the training rows' column mean or median, e.g. --impute median); series take linear (interpolation along "
        "time within each series, the ends filled with the nearest value, e.g. --impute linear); without it, "
        "missing values are an error naming the file, line and column",
    )
    v.add_argument(
        "--drop-constant",
        action="store_true",
        help="drop columns constant over the training rows (with a warning) instead of refusing them",
    )

    i = p.add_argument_group("images (a folder of PNG/JPEG, or MNIST IDX files)")
    i.add_argument(
        "--size",
        type=int,
        metavar="S",
        help="working size S x S: every image is resized to it (default: the images' own side when they share one "
        "square size <= 64, else 28)",
    )
    i.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1 = gray (default), 3 = RGB colour")
    i.add_argument(
        "--arch",
        choices=("dense", "conv"),
        default="dense",
        help="dense (default) or conv (two conv + pool stages; S a multiple of 4)",
    )

    s = p.add_argument_group("series (one CSV per series, a long CSV with --id-column, or sktime .ts)")
    s.add_argument(
        "--id-column",
        metavar="COLUMN",
        help="a long table: rows with the same value in COLUMN form one series, in file order; the other numeric "
        "columns (or --columns) are the channels",
    )
    s.add_argument(
        "--time-column",
        metavar="COLUMN",
        help="CSV/TSV series: a time column, numbers (read as seconds, e.g. Unix time) or ISO 8601 dates/times "
        "(without a UTC offset: UTC), e.g. --time-column timestamp; it orders the rows of each series and is not a "
        "channel; the steps must be regular (irregular ones are refused, listing the step sizes found) and the step "
        "is recorded in the card (input.sequence.step_seconds, forecast.step_seconds)",
    )
    s.add_argument(
        "--window",
        type=int,
        help="steps per training window (default: the shortest series or split piece, at most 50; forecasting: "
        "half of it)",
    )
    s.add_argument("--stride", type=int, help="steps between windows (default: window / 2; forecasting: 1)")
    s.add_argument(
        "--forecast",
        type=int,
        metavar="H",
        help="train a forecaster of every channel H steps after the window instead of an autoencoder",
    )

    t = p.add_argument_group("training")
    t.add_argument(
        "--split",
        type=_floats,
        default=(0.70, 0.15, 0.15),
        metavar="TR,VA,TE",
        help="train/validation/test fractions (default 70,15,15); the split is random, fixed by --seed",
    )
    t.add_argument("--seed", type=int, default=0, help="split and initialisation seed (default 0)")
    t.add_argument("--epochs", type=int, default=300, help="at most this many epochs (default 300)")
    t.add_argument(
        "--patience", type=int, default=20, help="stop after this many epochs without a better validation loss (20)"
    )
    t.add_argument(
        "--batch-size",
        type=int,
        help="samples per step (default: 64, or fewer on small data so an epoch has at least 8 steps, at least 8)",
    )
    t.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3; halved on plateaus)")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    t.add_argument(
        "--pca-if-better",
        action="store_true",
        help="any kind: export PCA (as a linear autoencoder with the same graphs, inputs and score) when it is not "
        "worse than the network on the validation split (which decides, so the test numbers stay honest); images: "
        "PCA of the pixels, reconstructions clipped to [0, 1]; series: PCA of the flattened standardised windows, "
        "a longer series averaging its windows (e.g. --pca-if-better --epochs 50); the card's metrics.exported "
        "says which was exported",
    )
    t.add_argument(
        "--quantile",
        type=float,
        default=0.99,
        help="anomaly threshold: this quantile of the validation samples' scores (default 0.99); the card also "
        "records the 0.5/0.9/0.95/0.99/0.999 quantiles and a grid of 1,001, so a request may pick another "
        "(score?quantile=0.95 or ?threshold=)",
    )
    t.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (default 1: small networks run 20x slower with 2 threads on a busy 2-core "
        "machine; more helps large images and batches)",
    )
    t.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="auto: a bar with the losses and time left when stderr is a terminal, else a line per epoch",
    )
    t.add_argument("-v", "--verbose", action="store_true", help="log the export and every warning")
    return p


def parse(argv: list[str]) -> tuple[FitOptions, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k not in ("verbose",)}
    opts = FitOptions(**fields, command=["python", "-m", "training", "fit", *argv])
    return opts, args


def _fit(opts: FitOptions, progress: Progress, world: distributed.World) -> Fitted:
    from training.fit.sources import infer_kind

    kind = infer_kind(opts)
    opts.check_kind(kind)
    progress.note(f"{opts.name}: fitting {kind} from {opts.data}")
    if kind == "vectors":
        from training.fit.vectors import fit_vectors

        return fit_vectors(opts, progress, world)
    if kind == "images":
        from training.fit.pictures import fit_images

        return fit_images(opts, progress, world)
    from training.fit.sequences import fit_series

    return fit_series(opts, progress, world)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 written, 2 bad data or options, nothing written)."""
    opts, args = parse(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO if args.verbose else logging.WARNING)
    world = distributed.join()
    progress = Progress(opts.progress if world.main else "none", warnings=world.main)
    try:
        opts.check()
        import torch

        torch.set_num_threads(opts.threads)
        target_root = opts.publish if opts.publish is not None else opts.out
        if opts.publish is None and (opts.out / opts.name).exists() and not opts.replace:
            raise ValueError(
                f"{opts.out / opts.name} exists: pass --replace to overwrite it, or --publish {opts.out} to add it "
                "as the next version beside what is there"
            )
        start = time.perf_counter()
        fitted = _fit(opts, progress, world)
        seconds = time.perf_counter() - start
        if not world.main:
            return 0
        from training.pipeline import write_model

        card = write_model(
            opts.name,
            target_root,
            fitted.trained,
            training=training_section(fitted, opts.to_card(), seconds, world.size),
            command=shlex.join(opts.command),
            publish=opts.publish is not None,
        )
    except (DataError, ValueError) as exc:
        if world.main:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: the export failed its checks: {exc}", file=sys.stderr)
        return 1
    finally:
        distributed.leave(world)
    folder = target_root / opts.name / (card["version"] if opts.publish is not None else "")
    lines = [f"{opts.name}: {card['description']}", *fitted.summary]
    lines.append(
        f"written: {folder} ({', '.join(sorted(g['file'] for g in card['graphs'].values()))}, card.json); "
        f"tasks: {', '.join(card['tasks'])}"
    )
    print("\n".join(lines))
    return 0
