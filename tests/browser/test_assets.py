"""The committed demo data and README example inputs are what `python -m tests.browser.demo_assets` writes."""

from __future__ import annotations

import json

import pytest

from tests.browser import demo_assets


@pytest.fixture(scope="module")
def digits() -> dict:
    try:
        return demo_assets.demo_digits()
    except Exception as error:  # the data package is not installed: nothing to compare against
        pytest.skip(f"the MNIST data is not available here: {error}")


def test_digits_file_is_generated(digits: dict) -> None:
    assert demo_assets.DIGITS_FILE.read_text() == demo_assets.render_digits(digits)
    assert sorted(json.loads(demo_assets.DIGITS_FILE.read_text())["digits"]) == [str(i) for i in range(10)]


def test_example_files_are_generated(digits: dict) -> None:
    try:
        files = demo_assets.example_files(digits)
    except Exception as error:
        pytest.skip(f"the BasicMotions data is not available here: {error}")
    assert sorted(p.name for p in demo_assets.EXAMPLES.iterdir()) == sorted(files)
    for name, content in files.items():
        assert (demo_assets.EXAMPLES / name).read_bytes() == content, f"{name}: run python -m tests.browser.demo_assets"
