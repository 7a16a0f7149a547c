"""Helpers for the deployment tests: the Dockerfile parsed into stages and instructions, the app's routes and
settings. Nothing here needs a Docker engine or a cluster (there is neither on the machine these run on)."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.routing import APIRoute
from starlette.routing import Mount

from app.main import create_app
from app.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        return shlex.split(self.args, comments=False)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of the stage (the `ENV a=b c=d` form)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in instruction.words():
                key, _, value = word.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert matches, f"no stage {name!r} in the Dockerfile"
        return matches[0]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Logical lines (continuations joined, comments dropped) grouped by stage."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append((start, buffer + line))
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"line {number}: only ARG may come before the first FROM"
            key, _, value = args.partition("=")
            global_args[key.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args.strip(), number))
    return Dockerfile(global_args, stages)


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def load_manifests(folder: str) -> list[dict[str, Any]]:
    documents = []
    for path in sorted((REPO / "deploy" / folder).glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return documents


@pytest.fixture(scope="session")
def routes() -> set[str]:
    """Every path the app serves with the default settings (built, not started: no models are loaded)."""
    app = create_app(Settings(models_dir=REPO / "models", log_level="warning"))
    paths = set()
    for route in app.routes:
        if isinstance(route, APIRoute):
            paths.add(route.path)
        elif isinstance(route, Mount):
            paths.add(route.path + "/")
        elif hasattr(route, "path"):
            paths.add(route.path)
    return paths


def route_exists(routes: set[str], path: str) -> bool:
    """A concrete path (`/v1/models/dense`) is served by one of the route templates (`/v1/models/{name}`)."""
    for template in routes:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + ("" if template.endswith("/") else "$")
        if re.match(pattern, path):
            return True
    return False


SETTING_NAMES = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def settings_from(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the service would read them from exactly this environment (names checked first)."""
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in SETTING_NAMES)
    assert not unknown, f"not settings of the service (app/settings.py): {unknown}"
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and value is not None:
            monkeypatch.setenv(key, str(value))
    return Settings()
