"""Natural photographs bundled inside packages (no download at run time), for the `photo` denoiser.

Training photographs (`TRAIN_PHOTOS`): those bundled in scikit-image's `skimage.data` (only the images shipped in
the wheel; entries that need a download are skipped) and scikit-learn's `load_sample_images()` (china, flower), as
issue 14 sets it: "any other photographs you find are for checking, never for training".

Check photographs (`DEBIAN_PHOTOS`): the photographs inside six Debian packages (drawings, renders, charts and text
left out): the desktop wallpapers of mate-backgrounds, plasma-workspace-wallpapers, lomiri-wallpapers-20.04 and
lxqt-themes (1.7-24 MP camera JPEGs and PNGs), the sample photographs of opencv-doc (0.1-1.4 MP: baboon, fruits,
aerial views, graffiti, buildings, circuit board, ... -- textured scenes, several of them gray) and PyWavelets' aerial
photograph and ascent (python3-pywt, 512 x 512 gray). They are fetched by `python -m training.data.debian_photos`
(`make photo-data`) into `runs/data/debian` or read from / when the packages are installed, and each is reduced by the
smallest integer factor that brings its long side to at most 1280 px (box filter), which averages away most of a
camera's own noise and JPEG blocks. The photo model's eval measures them beside the held-out gate; they train it only
when asked (`--set debian=true`, outside issue 14's rule).

Held out, never trained on: camera and coins (gray), coffee and flower (colour). Everything the model is
trained or validated on comes from `TRAIN_PHOTOS`; the quality gate is measured only on `HELD_OUT`.

Images are float32 in [0, 1], [H, W, C] with C = 1 (gray) or 3 (colour).

Noise as an upload would carry it (`add_noise`): Gaussian noise of standard deviation sigma (in units of
1/255 * 255, i.e. sigma given on the 0..1 scale), added, then rounded to 8 bits and clipped to [0, 1].
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.data.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("training.data")

# name -> (source, loader name). Natural photographs only (no synthetic test charts, text or logos).
TRAIN_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "astronaut"),
    "chelsea": ("skimage", "chelsea"),  # skimage's `cat` is the same photograph
    "rocket": ("skimage", "rocket"),
    "moon": ("skimage", "moon"),
    "motorcycle_left": ("skimage", "stereo_motorcycle:0"),
    "motorcycle_right": ("skimage", "stereo_motorcycle:1"),
    "hubble_deep_field": ("skimage", "hubble_deep_field"),
    "brick": ("skimage", "brick"),
    "grass": ("skimage", "grass"),
    "gravel": ("skimage", "gravel"),
    "clock": ("skimage", "clock"),
    "immunohistochemistry": ("skimage", "immunohistochemistry"),
    "retina": ("skimage", "retina"),
    "cell": ("skimage", "cell"),
    "china": ("sklearn", "china.jpg"),
}
# Photographs inside Debian packages: name -> ("debian", "package:path under the package's root").
_OPENCV = "usr/share/doc/opencv-doc/examples/"
_DEBIAN_SETS = (
    # (name prefix, package, path pattern, names)
    (
        "wp",
        "mate-backgrounds",
        "usr/share/backgrounds/mate/nature/{}.jpg",
        "Aqua Blinds Dune Garden LadyBird RainDrops Storm TwoWings Wood YellowFlower",
    ),
    (
        "wp",
        "plasma-workspace-wallpapers",
        "usr/share/wallpapers/{}/contents/images/2560x1440.jpg",
        "BytheWater ColdRipple EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am DarkestHour",
    ),
    ("wp", "plasma-workspace-wallpapers", "usr/share/wallpapers/{}/contents/images/2560x1600.jpg", "ColorfulCups"),
    ("wp", "plasma-workspace-wallpapers", "usr/share/wallpapers/{}/contents/images/5120x2880.jpg", "Volna"),
    ("wp", "lomiri-wallpapers-20.04", "usr/share/backgrounds/{}.jpg", "Kleiber_by_Lukas_Baubkus"),
    (
        "lxqt",
        "lxqt-themes",
        "usr/share/lxqt/wallpapers/{}",
        "Butterfly-Kenneth-Wimer.jpg Valendas.png after-the-rain.jpg appleflower.png beam.png butterfly.png "
        "cloud.png drop.png flowers.png fog.jpg this-is-not-windows.jpg",
    ),
    (
        "cv",
        "opencv-doc",
        _OPENCV + "data/{}",
        "aero1.jpg aero3.jpg aloeL.jpg apple.jpg baboon.jpg basketball1.png board.jpg box_in_scene.png building.jpg "
        "butterfly.jpg chicky_512.png ela_original.jpg fruits.jpg graf1.png home.jpg left.jpg left01.jpg "
        "leuvenA.jpg messi5.jpg orange.jpg rubberwhale1.png smarties.png squirrel_cls.jpg stuff.jpg",
    ),
    ("cv", "opencv-doc", _OPENCV + "{}", "alphamat/input_images/plant.jpg hfs/data/000.jpg"),
    ("cv_sr", "opencv-doc", _OPENCV + "dnn_superres/{}", "butterfly.png"),
    ("pywt", "python3-pywt", "usr/lib/python3/dist-packages/pywt/data/{}", "aero.npz ascent.npz"),
)
DEBIAN_PHOTOS: dict[str, tuple[str, str]] = {
    f"{prefix}_{Path(name).stem.lower()}": ("debian", f"{package}:{folder.format(name)}")
    for prefix, package, folder, names in _DEBIAN_SETS
    for name in names.split()
}
DEBIAN_PACKAGES = tuple(sorted({loader.partition(":")[0] for _, loader in DEBIAN_PHOTOS.values()}))
# Where the packages' files are looked for, in order: the fetched copy, then the installed packages.
DEBIAN_ROOTS = ("runs/data/debian", "/")
MAX_LONG_SIDE = 1280
HELD_OUT: dict[str, tuple[str, str]] = {
    "camera": ("skimage", "camera"),
    "coins": ("skimage", "coins"),
    "coffee": ("skimage", "coffee"),
    "flower": ("sklearn", "flower.jpg"),
}
HELD_OUT_GRAY = ("camera", "coins")
HELD_OUT_COLOUR = ("coffee", "flower")
# Luma weights (ITU-R BT.601) for gray versions of colour photographs.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Photo:
    name: str
    image: np.ndarray  # [H, W, C] float32 in [0, 1], C = 1 or 3

    @property
    def is_colour(self) -> bool:
        return self.image.shape[2] == 3


def _to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8:
        raise DataError(f"expected an 8-bit photograph, got {img.dtype}")
    img = img.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def reduce_to(img: Image.Image, max_long_side: int = MAX_LONG_SIDE) -> Image.Image:
    """Box-filter reduction by the smallest integer factor that brings the long side to <= `max_long_side`."""
    factor = -(-max(img.size) // max_long_side)
    return img.reduce(factor) if factor > 1 else img


def _load_debian(loader: str, roots: tuple[str, ...]) -> np.ndarray:
    from PIL import Image

    package, _, rel = loader.partition(":")
    for root in roots:
        path = Path(root) / rel
        if path.is_file():
            if path.suffix == ".npz":  # PyWavelets keeps its images as uint8 arrays under "data"
                with np.load(path) as npz:
                    return np.asarray(reduce_to(Image.fromarray(npz["data"])))
            with Image.open(path) as img:
                return np.asarray(reduce_to(img.convert("L" if img.mode in ("L", "LA") else "RGB")))
    raise DataError(f"{rel} not found (Debian package {package}; run `make photo-data`)")


def _load(name: str, source: str, loader: str) -> np.ndarray:
    if source == "debian":
        return _load_debian(loader, DEBIAN_ROOTS)
    if source == "skimage":
        try:
            import skimage.data as skdata
        except ImportError as exc:
            raise DataError("scikit-image is not installed (pip install -e '.[train]')") from exc
        func_name, _, index = loader.partition(":")
        try:
            out = getattr(skdata, func_name)()
        except Exception as exc:  # images that need a download raise here (no internet)
            raise DataError(f"skimage.data.{func_name} is not bundled in this install: {exc}") from exc
        return out[int(index)] if index else out
    if source == "sklearn":
        try:
            from sklearn.datasets import load_sample_images
        except ImportError as exc:
            raise DataError("scikit-learn is not installed (pip install -e '.[train]')") from exc
        bunch = load_sample_images()
        for path, img in zip(bunch.filenames, bunch.images, strict=True):
            if path.endswith(loader):
                return img
        raise DataError(f"scikit-learn's sample images have no {loader}")
    raise DataError(f"unknown photo source {source!r} for {name}")


def load_photos(names: dict[str, tuple[str, str]], skip_missing: bool = False, quiet: bool = False) -> list[Photo]:
    photos = []
    for name, (source, loader) in names.items():
        try:
            photos.append(Photo(name, _to_float(np.asarray(_load(name, source, loader)))))
        except DataError:
            if not skip_missing:
                raise
            if not quiet:
                log.warning("photo %s is not available here; training without it", name)
    return photos


def load_train_photos(debian: bool = False) -> list[Photo]:
    """The bundled training photographs, then (only with `debian`) the Debian packages' photographs that are present
    (by default they are check photographs, never trained on: see the module docstring)."""
    photos = load_photos(TRAIN_PHOTOS, skip_missing=True)
    if len(photos) < 5:
        raise DataError(f"only {len(photos)} training photographs could be loaded")
    if debian:
        extra = load_photos(DEBIAN_PHOTOS, skip_missing=True, quiet=True)
        if len(extra) < len(DEBIAN_PHOTOS):
            log.warning(
                "%d of %d Debian wallpaper photographs found (run `make photo-data` to fetch %s)",
                len(extra),
                len(DEBIAN_PHOTOS),
                ", ".join(DEBIAN_PACKAGES),
            )
        photos += extra
    return photos


def load_held_out() -> list[Photo]:
    return load_photos(HELD_OUT)


def provenance(photos: list[Photo]) -> dict:
    versions = {}
    for dist in ("scikit-image", "scikit-learn"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    debian = sorted(p.name for p in photos if p.name in DEBIAN_PHOTOS)
    return {
        "source": "photographs bundled in scikit-image (skimage.data) and scikit-learn (load_sample_images)"
        + (
            ", and photographs in Debian packages (training/data/photos.py DEBIAN_PHOTOS), each reduced by the "
            f"smallest integer factor to a long side <= {MAX_LONG_SIDE} px"
            if debian
            else " only (issue 14's rule: other photographs are for checking, never for training)"
        ),
        "packages": versions,
        "debian_packages": debian_versions() if debian else {},
        "debian_photos": {name: DEBIAN_PHOTOS[name][1] for name in debian},
        "train_photos": {p.name: list(p.image.shape) for p in photos},
        "held_out_photos": {name: f"{src}:{loader}" for name, (src, loader) in HELD_OUT.items()},
        "held_out_rule": "camera, coins (gray), coffee, flower (colour) are never trained or validated on",
    }


def _thumbnail(img: np.ndarray, side: int = 48) -> np.ndarray:
    from PIL import Image

    gray = to_gray(img)[:, :, 0]
    small = np.asarray(Image.fromarray(gray).resize((side, side), Image.BILINEAR), dtype=np.float64)
    small -= small.mean()
    return small / (np.linalg.norm(small) or 1.0)


def near_duplicates(train: list[Photo], held: list[Photo], threshold: float = 0.95) -> list[tuple[str, str, float]]:
    """(train name, held-out name, correlation) of pairs whose gray 48 x 48 thumbnails correlate above
    `threshold` in any of the 8 flips/rotations: a held-out photograph that came back under another name or
    size (the Debian wallpapers are not ours; names alone prove nothing)."""
    held_thumbs = [(h.name, _thumbnail(h.image)) for h in held]
    found = []
    for t in train:
        thumb = _thumbnail(t.image)
        for name, h in held_thumbs:
            best = max(float((_dihedral(thumb, k) * h).sum()) for k in range(8))
            if best > threshold:
                found.append((t.name, name, best))
    return found


def debian_versions() -> dict[str, str | None]:
    """The fetched packages' versions (recorded by training.data.debian_photos), else the installed ones."""
    import json
    import subprocess

    recorded = Path(DEBIAN_ROOTS[0]) / "versions.json"
    if recorded.is_file():
        return json.loads(recorded.read_text())
    versions: dict[str, str | None] = {}
    for package in DEBIAN_PACKAGES:
        try:
            out = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
            )
            versions[package] = out.stdout.strip() or None
        except OSError:
            versions[package] = None
    return versions


def to_gray(img: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> [H, W, 1] luma, rounded to 8 bits like a gray PNG; gray images pass through."""
    if img.shape[2] == 1:
        return img
    return (np.round((img @ LUMA) * 255.0) / 255.0).astype(np.float32)[:, :, None]


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator, same_in_channels: bool = False) -> np.ndarray:
    """Gaussian noise of std `sigma` (0..1 scale), rounded to 8 bits and clipped to [0, 1]; float32.

    `same_in_channels`: one noise field for every channel (a gray image fed as identical channels).
    """
    shape = (*clean.shape[:-1], 1) if same_in_channels else clean.shape
    noise = rng.standard_normal(shape).astype(np.float32) * np.float32(sigma)
    noisy = np.round((clean + noise) * 255.0) / 255.0
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _dihedral(patch: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of an [..., H, W] array."""
    out = np.rot90(patch, k % 4, axes=(-2, -1))
    return out[..., ::-1] if k >= 4 else out


class PatchSampler:
    """Random training patches as [N, 3, P, P] float32 (gray patches as 3 identical channels).

    A patch is gray with probability `gray_fraction` (cut from any photograph, colour ones converted to luma),
    otherwise colour (from a colour photograph). Photographs are picked with probability proportional to their
    area, capped at 512 x 512 so a few large, mostly empty images (retina, hubble) do not dominate. Each patch
    gets one of the 8 flips/rotations. The state is one numpy Generator (saved in checkpoints).
    """

    def __init__(self, photos: list[Photo], patch: int, gray_fraction: float, seed: int):
        self.patch = patch
        self.gray_fraction = gray_fraction
        self.rng = np.random.default_rng(seed)
        usable = [p for p in photos if min(p.image.shape[:2]) >= patch]
        if not usable:
            raise DataError(f"no training photograph is at least {patch} px on its short side")
        # CHW copies: colour as is, gray versions of every photograph.
        self.gray = [to_gray(p.image).transpose(2, 0, 1) for p in usable]
        self.colour = [p.image.transpose(2, 0, 1) for p in usable if p.is_colour]
        self.gray_w = self._weights(self.gray)
        self.colour_w = self._weights(self.colour)

    @staticmethod
    def _weights(images: list[np.ndarray]) -> np.ndarray:
        area = np.array([min(i.shape[1] * i.shape[2], 512 * 512) for i in images], dtype=np.float64)
        return area / area.sum() if len(area) else area

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(patches [n, 3, P, P], is_gray [n] bool)."""
        p = self.patch
        out = np.empty((n, 3, p, p), dtype=np.float32)
        is_gray = self.rng.random(n) < self.gray_fraction if self.colour else np.ones(n, dtype=bool)
        for i in range(n):
            pool, weights = (self.gray, self.gray_w) if is_gray[i] else (self.colour, self.colour_w)
            img = pool[self.rng.choice(len(pool), p=weights)]
            y = self.rng.integers(0, img.shape[1] - p + 1)
            x = self.rng.integers(0, img.shape[2] - p + 1)
            out[i] = _dihedral(img[:, y : y + p, x : x + p], int(self.rng.integers(0, 8)))
        return out, is_gray
