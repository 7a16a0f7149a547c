"""Train one model, export its graphs (each export verifies itself) and write its model card."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import onnx
import onnxruntime
import torch
from pydantic import ValidationError

from app.core.cards import CARD_FILE, CardError, ModelCard
from app.core.tasks import check_card
from app.core.versions import FLAT_VERSION, version_number
from training import registry
from training.export import export_graph
from training.spec import DataOptions, Trained

log = logging.getLogger("training")

CARD_SCHEMA_VERSION = 1


def _sync_tree(folder: Path) -> None:
    """fsync every file, then the folder: the rename that publishes it must not outrun its contents."""
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_written_card(card: dict) -> None:
    """The card as the service will read it: its schema (`app.core.cards.ModelCard`) and the tasks' needs
    (`app.core.tasks.check_card`), checked before anything is written (ValueError with the reason)."""
    try:
        check_card(ModelCard.model_validate(card))
    except (ValidationError, CardError) as exc:
        raise ValueError(f"{card.get('name')}: the card would not load in the service: {exc}") from exc


def make_config(name: str, quick: bool = False, overrides: dict | None = None):
    """The model's default config, with quick mode and `field=value` overrides applied."""
    module = registry.get(name)
    cfg = module.Config()
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"{name}: unknown config field {key!r}; fields: {', '.join(sorted(fields))}")
        current = getattr(cfg, key)
        if isinstance(current, bool):
            value = str(value).lower() in ("1", "true", "yes", "on")
        setattr(cfg, key, type(current)(value) if current is not None else value)
    if "given" in fields:  # models that resume from checkpoints keep what the command line set (photo)
        cfg.given = list(overrides or ())
    if quick:
        cfg.quick = True
        cfg.epochs = 1
    return cfg


def next_version(model_folder: Path) -> int:
    """The version a publish writes: one above every version on disk (the flat layout counts as 1; so does any
    integer-named folder, finished or not, so a copy in progress is never overwritten); 1 for a new model."""
    taken = [FLAT_VERSION] if (model_folder / CARD_FILE).is_file() else []
    if model_folder.is_dir():
        taken += [n for n in (version_number(p.name) for p in model_folder.iterdir()) if n is not None]
    return max(taken, default=0) + 1


def run(name: str, out_root: Path, cfg=None, data: DataOptions | None = None, publish: bool = False) -> dict:
    """Train `name`, export into `out_root/name/` (replacing what was there) and return its card.

    `publish`: leave what is there alone and write the model as its next version, `out_root/name/<n>/`: the files
    go to a dot-folder beside it (which a serving repository ignores) that is renamed to `<n>` once complete, so
    a service polling the folder never sees half a model.
    """
    module = registry.get(name)
    cfg = cfg if cfg is not None else make_config(name)
    data = data or DataOptions()
    log.info("training %s with %s", name, cfg)
    start = time.perf_counter()
    trained = module.train(cfg, data)
    train_seconds = time.perf_counter() - start
    training = {
        "config": dataclasses.asdict(cfg),
        "best_epoch": trained.fit.best_epoch,
        "best_val_loss": trained.fit.best_val_loss,
        "seconds": round(train_seconds, 1),
        "quick": cfg.quick,
    }
    command = f"python -m training {name}" + (f" --publish {out_root}" if publish else "")
    return write_model(name, out_root, trained, training=training, command=command, publish=publish)


def write_model(name: str, out_root: Path, trained: Trained, *, training: dict, command: str, publish: bool) -> dict:
    """Export `trained`'s graphs and write its card into `out_root/name/` (replacing what was there), or with
    `publish` as its next version `out_root/name/<n>/` (see `run`); returns the card. The card is validated as the
    service will read it before anything is moved into place; a failure leaves no staging folder behind."""
    # Export into a fresh staging folder, then swap: a failed export never leaves a half-written model.
    out_dir = out_root / name
    version = 1
    if publish:
        version = next_version(out_dir)
        out_dir = out_root / name / str(version)
        staging = out_root / name / f".tmp-{version}-{os.getpid()}"
    else:
        staging = out_root / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    created = [p for p in (out_root, staging.parent) if not p.exists()]
    staging.mkdir(parents=True)
    try:
        card = _write_staging(name, version, trained, staging, training, command)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):  # folders this call made, so a failure leaves the tree as it was
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    if publish:
        _sync_tree(staging)
        try:
            os.rename(staging, out_dir)  # atomic; fails rather than replace a folder that appeared meanwhile
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ValueError(f"could not publish {out_dir}: {exc}") from exc
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    log.info("%s: trained in %.1f s, written to %s", name, training["seconds"], out_dir)
    for gate in trained.gates:
        if not gate.passed:
            log.warning(
                "%s: quality gate NOT met: %s (value %.4g, target %.4g)", name, gate.name, gate.value, gate.target
            )
    return card


def _write_staging(name: str, version: int, trained: Trained, staging: Path, training: dict, command: str) -> dict:
    """The graphs, artefacts and card of one model, written into `staging`; returns the card."""
    graphs = {g.name: export_graph(g, staging) for g in trained.graphs}
    for file_name, payload in trained.artifacts.items():
        (staging / file_name).write_bytes(payload)
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": name,
        "version": str(version),
        "kind": trained.kind,
        "description": trained.description,
        "tasks": trained.tasks,
        "graphs": graphs,
        "preprocessing": trained.preprocessing,
        **trained.sections,
        "metrics": {**trained.metrics, "gates": [g.to_card() for g in trained.gates]},
        "training": training,
        "data": trained.data,
        "artifacts": sorted(trained.artifacts),
        "provenance": {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }
    check_written_card(card)
    (staging / CARD_FILE).write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    return card
