"""Print the pip requirements of an image, read from `pyproject.toml` (the one place dependencies are declared).

    python requirements.py serve                      the CPU serving image: the `serve` extra as it is
    python requirements.py serve --runtime cuda       the same with `onnxruntime` swapped for `onnxruntime-gpu`
    python requirements.py train                      the training image: the `train` extra, torch from the CPU index

Used by the Dockerfile (it copies this file next to pyproject.toml) and by tests/deploy, which check that the
images install exactly the declared extras. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as vendored by pip
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

# onnxruntime-gpu on PyPI can lag the CPU wheel by a version (PITFALLS.md): pinned separately, and the CUDA base
# image in the Dockerfile must match what this release was built for (see the comment there).
ORT_GPU_VERSION = "1.31.1"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (`uvicorn[standard]>=0.30` -> `uvicorn`)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def extra(pyproject: Path, name: str) -> list[str]:
    """The requirements of one optional-dependencies extra."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return list(data["project"]["optional-dependencies"][name])


def serve_requirements(pyproject: Path, runtime: str = "cpu", ort_gpu_version: str = ORT_GPU_VERSION) -> list[str]:
    """The serving image's requirements: the `serve` extra; for CUDA, `onnxruntime-gpu` instead of `onnxruntime`
    (both share the import name `onnxruntime`: never install the two together)."""
    requirements = extra(pyproject, "serve")
    if runtime == "cpu":
        return requirements
    if runtime != "cuda":
        raise ValueError(f"unknown runtime {runtime!r} (cpu or cuda)")
    swapped = [r for r in requirements if requirement_name(r) != "onnxruntime"]
    if len(swapped) != len(requirements) - 1:
        raise ValueError("the serve extra must name onnxruntime exactly once")
    return [*swapped, f"onnxruntime-gpu=={ort_gpu_version}"]


def train_requirements(pyproject: Path) -> list[str]:
    """The training image's requirements: the `train` extra, with torch taken from PyTorch's CPU-only index
    (PyPI's Linux torch wheel pulls the CUDA libraries, gigabytes the training image does not need)."""
    lines = [f"--extra-index-url {TORCH_CPU_INDEX}"]
    for requirement in extra(pyproject, "train"):
        if requirement_name(requirement) == "torch":
            version = re.search(r"==\s*([0-9][^,;\s]*)", requirement)
            if not version:
                raise ValueError(f"torch must be pinned with == in the train extra, got {requirement!r}")
            lines.append(f"torch=={version.group(1).split('+')[0]}+cpu")
        else:
            lines.append(requirement)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", choices=["serve", "train"])
    parser.add_argument("--runtime", choices=["cpu", "cuda"], default="cpu", help="serve only")
    parser.add_argument("--ort-gpu-version", default=ORT_GPU_VERSION, help="onnxruntime-gpu version (cuda only)")
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).with_name("pyproject.toml"))
    args = parser.parse_args(argv)
    if args.image == "serve":
        lines = serve_requirements(args.pyproject, args.runtime, args.ort_gpu_version)
    else:
        lines = train_requirements(args.pyproject)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
