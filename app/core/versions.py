"""Model versions in the repository: which version folders a model has, and which of them serve.

Layout (as Triton's model repository): `models/<name>/<version>/` folders with integer names hold a card and its
graphs; files directly in `models/<name>/` (the flat layout every shipped model uses) are version 1 and may sit
beside `2/`, `3/`... The folder number is the version: a card whose `version` says otherwise is refused.

`models/<name>/versions.json` (optional) holds the version policy, in the shapes of Triton's `version_policy`,
and the default version:

    {"policy": {"latest": {"num_versions": 2}}, "default": 3}
    {"policy": "all"}
    {"policy": {"specific": {"versions": [1, 3]}}}

(`{"latest": 2}` and `{"specific": [1, 3]}` are accepted too). No file: the latest version only, which is then
the default. Without `default`, the default is the highest version that loaded.

`snapshot` is what the repository poll (`app.core.control`) compares: the names, sizes and modification times of a
model folder's files and of its version folders' files, read without opening a file. Hidden folders
(`.tmp-3/`) are a publisher's work in progress, renamed to their number once complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.core.cards import CARD_FILE, read_regular_file

VERSIONS_FILE = "versions.json"
FLAT_VERSION = 1
"""The version of the files sitting directly in the model's folder."""
MAX_VERSION = 2**31 - 1


class PolicyError(ValueError):
    """`versions.json` is unreadable or malformed; the message says what."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions on disk serve, and which one answers when none is named."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    default: int | None = None

    def select(self, on_disk: list[int]) -> list[int]:
        """The versions to load, ascending: for `specific`, every listed version (one missing from disk fails)."""
        if self.kind == "all":
            return sorted(on_disk)
        if self.kind == "specific":
            return sorted(self.versions)
        return sorted(on_disk)[-self.num_versions :]

    def as_dict(self) -> dict[str, object]:
        """The policy as `versions.json` would spell it (Triton's shapes)."""
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"latest": {"num_versions": self.num_versions}}


def version_number(text: str) -> int | None:
    """The version a folder name or a URL segment names: a positive integer in plain decimal, else None."""
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0") or len(text) > 10:
        return None
    number = int(text)
    return number if 0 < number <= MAX_VERSION else None


def version_folders(model_folder: Path) -> dict[int, Path]:
    """Every version on disk: `<n>/` folders holding a card, and the flat layout's card as version 1 (a `1/`
    folder beside a flat card is the same version twice: the folder wins, and the registry says so)."""
    found: dict[int, Path] = {}
    if (model_folder / CARD_FILE).is_file():
        found[FLAT_VERSION] = model_folder
    try:
        children = sorted(model_folder.iterdir())
    except OSError:  # unreadable: only what the flat layout gives
        children = []
    for path in children:
        number = version_number(path.name)
        if number is not None and path.is_dir() and (path / CARD_FILE).is_file():
            found[number] = path
    return dict(sorted(found.items()))


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_VERSION:
        raise PolicyError(f"{VERSIONS_FILE}: {what} must be a positive integer, not {json.dumps(value)}")
    return value


def _long_form(value: object, kind: str, key: str, placeholder: str) -> object:
    """Triton's long form `{"<key>": value}` of a policy's argument unwrapped; the short form as it is."""
    if not isinstance(value, dict):
        return value
    if set(value) != {key}:
        raise PolicyError(f'{VERSIONS_FILE}: {kind!r} takes {{"{key}": {placeholder}}}')
    return value[key]


def parse_policy(raw: object) -> VersionPolicy:
    """The policy of a parsed `versions.json`; PolicyError naming the problem."""
    if not isinstance(raw, dict):
        raise PolicyError(f"{VERSIONS_FILE}: expected an object with 'policy' and/or 'default'")
    unknown = sorted(set(raw) - {"policy", "default"})
    if unknown:
        raise PolicyError(f"{VERSIONS_FILE}: unknown key(s) {unknown}; it takes 'policy' and 'default'")
    default = None if raw.get("default") is None else _positive_int(raw["default"], "'default'")
    policy = raw.get("policy", {"latest": {"num_versions": 1}})
    if policy == "all" or policy == {"all": {}}:
        result = VersionPolicy("all", default=default)
    elif isinstance(policy, dict) and len(policy) == 1 and "latest" in policy:
        latest = _long_form(policy["latest"], "latest", "num_versions", "N")
        result = VersionPolicy("latest", num_versions=_positive_int(latest, "'latest' num_versions"), default=default)
    elif isinstance(policy, dict) and len(policy) == 1 and "specific" in policy:
        listed = _long_form(policy["specific"], "specific", "versions", "[...]")
        if not isinstance(listed, list) or not listed:
            raise PolicyError(f"{VERSIONS_FILE}: 'specific' needs a non-empty list of versions")
        versions = tuple(sorted({_positive_int(v, "a 'specific' version") for v in listed}))
        result = VersionPolicy("specific", versions=versions, default=default)
    else:
        raise PolicyError(
            f'{VERSIONS_FILE}: \'policy\' must be "all", {{"latest": {{"num_versions": N}}}} or '
            f'{{"specific": {{"versions": [...]}}}}, not {json.dumps(policy)[:200]}'
        )
    if default is not None and result.kind == "specific" and default not in result.versions:
        raise PolicyError(f"{VERSIONS_FILE}: default version {default} is not among the specific versions")
    return result


def read_policy(model_folder: Path) -> VersionPolicy:
    """The model's `versions.json`, or the default policy (latest 1) without one; PolicyError when malformed."""
    path = model_folder / VERSIONS_FILE
    if not path.exists():
        return VersionPolicy()
    try:
        raw = json.loads(read_regular_file(path))
    except OSError as exc:
        raise PolicyError(f"cannot read {VERSIONS_FILE}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise PolicyError(f"{VERSIONS_FILE} is not valid JSON: {exc}") from exc
    return parse_policy(raw)


# -- what the repository holds now, for the poll (app/core/control.py) -------------------------------------------
Fingerprint = tuple[tuple[str, int, int], ...]
"""Names, sizes and modification times (ns) of the regular files of one folder: a change in any of them (a file
written, replaced, renamed, touched) changes the fingerprint, without reading a byte."""
FLAT_KEY = ""
"""The snapshot key of the flat layout's files (version 1 directly in the model folder)."""


def fingerprint(folder: Path) -> Fingerprint:
    """The fingerprint of the regular files directly in `folder` (subfolders left out)."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for item in entries:
                try:
                    if not item.is_file():
                        continue
                    info = item.stat()
                except OSError:  # vanished while we looked: the next look sees the change
                    continue
                found.append((item.name, info.st_size, info.st_mtime_ns))
    except OSError:
        return ()
    return tuple(sorted(found))


def snapshot(model_folder: Path) -> dict[str, Fingerprint]:
    """What a model folder holds now: the fingerprint of `versions.json`, of the flat layout's files (key ""), and
    of every folder with a version's name (`<n>/`, with or without a card yet). Hidden folders (a publisher's
    `.tmp-<n>/`, not complete yet) are left out."""
    found: dict[str, Fingerprint] = {}
    files = fingerprint(model_folder)
    policy = tuple(item for item in files if item[0] == VERSIONS_FILE)
    if policy:
        found[VERSIONS_FILE] = policy
    flat = tuple(item for item in files if item[0] != VERSIONS_FILE)
    if flat:
        found[FLAT_KEY] = flat
    for number, path in numbered_folders(model_folder).items():
        found[str(number)] = fingerprint(path)
    return found


def numbered_folders(model_folder: Path) -> dict[int, Path]:
    """Every `<n>/` folder of the model, holding a card or not (a folder without one is a version being
    written, or one copied by hand without the dot-folder step)."""
    found: dict[int, Path] = {}
    try:
        children = list(model_folder.iterdir())
    except OSError:
        return found
    for path in children:
        number = version_number(path.name)
        if number is not None and path.is_dir():
            found[number] = path
    return dict(sorted(found.items()))
