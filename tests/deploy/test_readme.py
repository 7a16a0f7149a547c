"""The top-level README stays true: its configuration table names every setting, its model table every model,
and every curl and Python example in it runs against a real server and prints what the README says."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.app.conftest import make_client, models_dir  # noqa: F401  (models_dir: fixture of the server below)
from tests.app.test_server import server  # noqa: F401  (a real uvicorn process on the committed models)
from tests.deploy.conftest import REPO, SETTING_NAMES
from tests.deploy.models_doc import DESCRIPTIONS
from tests.deploy.models_doc import table as models_table

README = (REPO / "README.md").read_text()


def section(heading: str) -> str:
    """The README text under `## heading`, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def between(marker: str) -> str:
    match = re.search(rf"<!-- {marker}:start -->\n(.*?)<!-- {marker}:end -->", README, re.S)
    assert match, f"README.md has no {marker} markers"
    return match.group(1)


def test_settings_table_names_every_setting() -> None:
    listed = set(re.findall(r"^\| `(AE_[A-Z0-9_]+)` \|", between("settings-table"), re.M))
    hint = "regenerate it: python -m tests.deploy.settings_doc"
    assert listed - SETTING_NAMES == set(), f"README lists settings that do not exist; {hint}"
    assert SETTING_NAMES - listed == set(), f"README misses settings; {hint}"


def test_model_table_names_every_model() -> None:
    table = between("models-table")
    models = sorted(p.parent.name for p in (REPO / "models").glob("*/card.json"))
    assert models, "no committed models"
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", table, re.M)
    assert sorted(listed) == models


def test_model_table_is_current() -> None:
    """The README's numbers are models/README.md's (written by training from the cards), and every model is
    described."""
    assert between("models-table").strip() == models_table().strip(), "python -m tests.deploy.models_doc"
    assert set(DESCRIPTIONS) >= {p.parent.name for p in (REPO / "models").glob("*/card.json")}


def test_two_commands_and_benchmark_pointer() -> None:
    commands = section("The two commands")
    assert "make serve" in commands and "make test" in commands
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "bench/RESULTS.md" in section("Benchmark")


def test_links_point_at_files() -> None:
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)\)", README):
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"


def test_curl_examples_run(server: str, tmp_path: Path) -> None:  # noqa: F811
    """Every bash block of "API by example", run in order in one directory against the real server."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    blocks = code_blocks(section("API by example"), "bash")
    assert len(blocks) >= 5
    host = server.removeprefix("http://")
    prelude = 'set -e\ncurl() { command curl --fail-with-body --show-error "$@"; }\n'
    for block in blocks:
        script = prelude + block.replace("localhost:8000", host)
        result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{block}\n--- stdout\n{result.stdout[-2000:]}\n--- stderr\n{result.stderr}"
    # What the commands wrote is what the README says they write.
    sizes = {"decoded.png": (28, 28), "reconstructed.png": (28, 28), "denoised.png": (56, 56)}
    sizes |= {"photo-denoised.png": (384, 256), "photo-denoised.jpg": (384, 256)}
    for name, size in sizes.items():
        image = Image.open(io.BytesIO((tmp_path / name).read_bytes()))
        assert image.format == ("JPEG" if name.endswith(".jpg") else "PNG") and image.size == size, name
        assert image.mode == ("RGB" if name.startswith("photo") else "L"), name
    assert json.loads((tmp_path / "digits.json").read_text())["inputs"][0].__len__() == 784


def test_python_examples_run(server: str, tmp_path: Path) -> None:  # noqa: F811
    """Every Python block of "Python clients" runs and prints what its `print(...)  # expected` comments say."""
    blocks = code_blocks(section("Python clients"), "python")
    assert len(blocks) == 2
    for block in blocks:
        if "tritonclient" in block:
            pytest.importorskip("tritonclient.http")
        expected = re.findall(r"print\(.*\)\s+# (.+)$", block, re.M)
        script = block.replace("127.0.0.1:8000", server.removeprefix("http://"))
        command = [sys.executable, "-c", script]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == expected


def test_drop_in_model_recipe(tmp_path: Path) -> None:
    """The README's recipe for a new model, after its training step: copy the folder under a new name, rename the
    card, and the service serves it under that name."""
    block = next(b for b in code_blocks(section("Training"), "bash") if "models/dense16" in b)
    steps = block.replace("\\\n", "").splitlines()
    copy_and_rename = [line for line in steps if line.startswith(("mkdir", ".venv/bin/python -c"))]
    assert len(copy_and_rename) == 2
    # What `python -m training dense --out runs/dense16` writes (the committed dense model stands in for it).
    shutil.copytree(REPO / "models" / "dense", tmp_path / "runs" / "dense16" / "dense")
    script = "set -e\n" + "\n".join(copy_and_rename).replace(".venv/bin/python", sys.executable)
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with make_client(models_dir=tmp_path / "models") as client:
        detail = client.get("/v1/models/dense16")
        assert detail.status_code == 200 and detail.json()["status"] == "ready", detail.text
        assert client.get("/readyz").json()["ready"] is True
        x = {"inputs": [[0.5] * 784]}
        assert client.post("/v1/models/dense16/encode", json=x).json()["shape"] == [1, 32]
