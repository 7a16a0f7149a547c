"""`python -m tests.deploy.settings_doc`: the README's configuration table, generated from `app/settings.py`
(every `Settings` field, its default, and the docstring under it). tests/deploy/test_readme.py checks that the
README's table names exactly the settings that exist."""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from app.settings import ENV_PREFIX, Settings
from tests.deploy.readme_sections import replace_section

SETTINGS_FILE = Path(__file__).resolve().parents[2] / "app" / "settings.py"


def field_docstrings() -> dict[str, str]:
    """The docstring right under each field of `Settings` in the source."""
    tree = ast.parse(SETTINGS_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(cls.body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def show_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value else "(empty)"
    return str(value)


def table() -> str:
    docs = field_docstrings()
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        meaning = (docs.get(name) or info.description or "").replace("|", "\\|")
        default = show_default(info.default).replace("|", "\\|")
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | `{default}` | {meaning} |")
    return "\n".join(lines)


def replace_table(readme: str) -> str:
    """The README with the text between the settings markers replaced by a fresh table."""
    return replace_section(readme, "settings-table", table())


def main() -> int:
    readme = SETTINGS_FILE.parents[1] / "README.md"
    readme.write_text(replace_table(readme.read_text()))
    print(f"updated the settings table in {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
