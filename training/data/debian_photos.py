"""Fetch the Debian packages whose photographs check the `photo` denoiser beside its held-out gate (`make photo-data`;
they train it only with `--set debian=true`).

    python -m training.data.debian_photos [--root runs/data/debian]

Downloads the .deb files with `apt-get download` (no root, nothing installed; needs apt's package lists, so
`apt-get update` once on a fresh machine) and unpacks them with `dpkg-deb -x` under `--root`, then records the
package versions in `<root>/versions.json` for the model card. Already unpacked packages are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from training.data.errors import DataError
from training.data.photos import DEBIAN_PACKAGES, DEBIAN_PHOTOS, DEBIAN_ROOTS

log = logging.getLogger("training.data")


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DataError(f"{cmd[0]} is not available here ({exc}); the Debian photographs need apt and dpkg") from exc
    if out.returncode != 0:
        raise DataError(f"{' '.join(cmd)} failed: {out.stderr.strip()[-500:]}")
    return out.stdout


def fetch(root: Path) -> dict[str, str]:
    """Download and unpack every package in DEBIAN_PACKAGES under `root`; returns {package: version}."""
    root.mkdir(parents=True, exist_ok=True)
    versions_file = root / "versions.json"
    versions: dict[str, str] = json.loads(versions_file.read_text()) if versions_file.is_file() else {}
    for package in DEBIAN_PACKAGES:
        if package in versions:
            log.info("%s %s already unpacked", package, versions[package])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            _run(["apt-get", "download", package], cwd=Path(tmp))
            debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
            if not debs:
                raise DataError(f"apt-get download {package} left no .deb")
            version = _run(["dpkg-deb", "-f", str(debs[0]), "Version"]).strip()
            _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
        versions[package] = version
        versions_file.write_text(json.dumps(versions, indent=1, sort_keys=True) + "\n")
        log.info("%s %s unpacked under %s", package, version, root)
    missing = [name for name, (_, loader) in DEBIAN_PHOTOS.items() if not (root / loader.partition(":")[2]).is_file()]
    if missing:
        raise DataError(f"photographs missing after unpacking: {missing}")
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(DEBIAN_ROOTS[0]))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("apt-get") is None:
        print("apt-get is not available: the photo model trains on the bundled photographs only", file=sys.stderr)
        return 1
    try:
        versions = fetch(args.root)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(DEBIAN_PHOTOS)} photographs from {versions} under {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
