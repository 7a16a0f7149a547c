"""The generated sections of README.md: text between `<!-- NAME:start -->` and `<!-- NAME:end -->`."""

from __future__ import annotations

import re


def replace_section(readme: str, name: str, body: str) -> str:
    """`readme` with the text between the `name` markers replaced by `body`."""
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(readme):
        raise ValueError(f"README.md has no <!-- {name}:start/end --> markers")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), readme)
