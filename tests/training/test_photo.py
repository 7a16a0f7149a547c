"""The photo denoiser: data split, sigma estimator, quick pipeline (train -> export -> ONNX -> card), resume."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F

from app.core.noise import estimate_sigma
from training import registry
from training.__main__ import main
from training.data import debian_photos, photos
from training.data.photos import (
    DEBIAN_PHOTOS,
    HELD_OUT,
    TRAIN_PHOTOS,
    PatchSampler,
    add_noise,
    load_held_out,
    load_train_photos,
    to_gray,
)
from training.models import photo
from training.pipeline import CARD_FILE, make_config, run

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ data


def test_held_out_photos_are_never_in_the_training_list():
    assert set(HELD_OUT) == {"camera", "coins", "coffee", "flower"}
    assert not set(TRAIN_PHOTOS) & set(HELD_OUT)
    # Not by another name either: no training image has the pixels of a held-out one.
    train, held = load_train_photos(), load_held_out()
    assert len(train) >= 10
    for t in train:
        for h in held:
            assert t.image.shape != h.image.shape or not np.array_equal(t.image, h.image), (t.name, h.name)
    # Nor in the sampler's pools (gray versions included): no patch source has a held-out photo's pixels.
    sampler = PatchSampler(train, 64, 0.5, seed=0)
    held_chw = [a.transpose(2, 0, 1) for h in held for a in {h.image.shape[2]: h.image, 1: to_gray(h.image)}.values()]
    for img in sampler.gray + sampler.colour:
        assert not any(img.shape == h.shape and np.array_equal(img, h) for h in held_chw)


def _fake_debian_root(root: Path, names: list[str], size: tuple[int, int] = (2600, 1500)) -> None:
    """Writes camera-sized JPEGs where the Debian packages keep the listed photographs."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for name in names:
        path = root / DEBIAN_PHOTOS[name][1].partition(":")[2]
        path.parent.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (size[1] // 50, size[0] // 50, 3), dtype=np.uint8)
        Image.fromarray(base).resize(size, Image.BILINEAR).save(path, quality=92)


def test_debian_photographs_are_reduced_and_missing_ones_skipped(tmp_path, monkeypatch, caplog):
    from PIL import Image

    assert not set(DEBIAN_PHOTOS) & (set(HELD_OUT) | set(TRAIN_PHOTOS))
    assert photos.DEBIAN_PACKAGES == (
        "lomiri-wallpapers-20.04",
        "lxqt-themes",
        "mate-backgrounds",
        "opencv-doc",
        "plasma-workspace-wallpapers",
        "python3-pywt",
    )
    present = ["wp_aqua", "wp_volna"]
    _fake_debian_root(tmp_path, present)
    monkeypatch.setattr(photos, "DEBIAN_ROOTS", (str(tmp_path / "nowhere"), str(tmp_path)))
    with caplog.at_level("WARNING", logger="training.data"):
        loaded = load_train_photos(debian=True)
    bundled = load_train_photos()
    assert [p.name for p in loaded] == [p.name for p in bundled] + present
    for p in loaded[len(bundled) :]:
        # 2600 x 1500 reduced by 3 (the smallest integer factor to a long side <= 1280), in [0, 1], colour.
        assert p.image.shape == (500, 867, 3) and p.image.dtype == np.float32 and p.is_colour
        assert p.image.min() >= 0.0 and p.image.max() <= 1.0
    assert f"2 of {len(DEBIAN_PHOTOS)} Debian wallpaper photographs found" in caplog.text
    assert "make photo-data" in caplog.text
    # Card provenance names what was used and where it came from.
    prov = photos.provenance(loaded)
    assert sorted(prov["debian_photos"]) == present
    assert prov["debian_photos"]["wp_volna"].startswith("plasma-workspace-wallpapers:usr/share/wallpapers/Volna/")
    assert set(prov["debian_packages"]) == set(photos.DEBIAN_PACKAGES)
    assert photos.reduce_to(Image.new("RGB", (1280, 720))).size == (1280, 720)  # small enough: unchanged


def test_gray_debian_photographs_stay_gray_including_pywavelets_arrays(tmp_path, monkeypatch):
    """opencv-doc's gray samples (PNG/JPEG in mode L) and PyWavelets' .npz arrays load as one channel."""
    from PIL import Image

    rng = np.random.default_rng(5)
    aero = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    npz_path = tmp_path / DEBIAN_PHOTOS["pywt_aero"][1].partition(":")[2]
    npz_path.parent.mkdir(parents=True)
    np.savez(npz_path, data=aero)
    png_path = tmp_path / DEBIAN_PHOTOS["cv_basketball1"][1].partition(":")[2]
    png_path.parent.mkdir(parents=True)
    Image.fromarray(aero[:480, :400]).save(png_path)
    monkeypatch.setattr(photos, "DEBIAN_ROOTS", (str(tmp_path),))
    loaded = {p.name: p for p in photos.load_photos({k: DEBIAN_PHOTOS[k] for k in ("pywt_aero", "cv_basketball1")})}
    assert loaded["pywt_aero"].image.shape == (512, 512, 1) and not loaded["pywt_aero"].is_colour
    np.testing.assert_array_equal(loaded["pywt_aero"].image[:, :, 0], aero.astype(np.float32) / 255)
    assert loaded["cv_basketball1"].image.shape == (480, 400, 1)


def test_a_held_out_photograph_under_another_name_and_size_is_caught():
    from PIL import Image

    train, held = load_train_photos(debian=True), load_held_out()
    assert photos.near_duplicates(train, held) == []  # the bundled and (when fetched) Debian photographs
    camera = next(h for h in held if h.name == "camera").image[:, :, 0]
    smaller = np.asarray(Image.fromarray((camera * 255).astype(np.uint8)).resize((300, 300)), np.float32) / 255
    disguised = photos.Photo("wp_disguised", np.rot90(smaller)[:, :, None].repeat(3, axis=2).copy())
    (pair,) = photos.near_duplicates([*train[:3], disguised], held)
    assert pair[:2] == ("wp_disguised", "camera") and pair[2] > 0.95


def test_the_model_trains_on_the_bundled_photographs_only_unless_asked(tmp_path, monkeypatch):
    """Issue 14: "any other photographs you find are for checking, never for training" -- the Debian packages'
    photographs are the eval's check set; they train the model only with `--set debian=true`."""
    _fake_debian_root(tmp_path, ["wp_aqua"], size=(400, 300))
    monkeypatch.setattr(photos, "DEBIAN_ROOTS", (str(tmp_path),))
    assert photo.Config().debian is False and make_config("photo").debian is False
    assert make_config("photo", overrides={"debian": "true"}).debian is True
    default = load_train_photos()
    assert {p.name for p in default} <= set(TRAIN_PHOTOS) and len(default) >= 10
    assert [p.name for p in load_train_photos(debian=True)] == [p.name for p in default] + ["wp_aqua"]
    prov = photos.provenance(default)
    assert prov["debian_photos"] == {} and "other photographs are for checking" in prov["source"]
    assert "Debian packages" in photos.provenance(load_train_photos(debian=True))["source"]


def test_check_photographs_are_measured_beside_the_gate():
    """The card's `check_photos`: central crops, the model beside the noisy input and NL-means, per kind."""
    rng = np.random.default_rng(4)
    base = rng.random((12, 12, 3)).astype(np.float32)
    smooth = np.kron(base, np.ones((8, 8, 1), np.float32))  # 96 x 96, blocks: NL-means cleans it well
    check = [photos.Photo("wp_a", smooth), photos.Photo("cv_b", smooth[:, :, :1])]
    result = photo.check_photos_eval(lambda x, sigma: x, check, use_bm3d=False, crop=64)  # identity "model"
    assert result["photos"] == ["wp_a", "cv_b"] and "never trained on" in result["what"]
    for s in ("15", "25", "50"):
        for kind in ("gray", "colour"):
            row = result["by_sigma"][s][kind]
            assert set(row) == {"model_blind", "model_given_sigma", "noisy_input", "nl_means", "photos"}
            assert row["model_blind"]["psnr_db"] == pytest.approx(row["noisy_input"]["psnr_db"])
            assert row["nl_means"]["psnr_db"] > row["noisy_input"]["psnr_db"] + 3


def test_fetching_the_debian_photographs_reports_a_clear_error_without_apt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    assert debian_photos.main(["--root", str(tmp_path / "root")]) == 1
    assert "apt-get is not available" in capsys.readouterr().err
    with pytest.raises(photos.DataError, match="apt-get is not available here"):
        debian_photos.fetch(tmp_path / "root")


def test_patches_gray_have_identical_channels_and_colour_do_not():
    sampler = PatchSampler(load_train_photos()[:4], 32, 0.5, seed=1)
    clean, is_gray = sampler.sample(64)
    assert clean.shape == (64, 3, 32, 32) and clean.dtype == np.float32
    assert 0 < is_gray.sum() < 64 and clean.min() >= 0.0 and clean.max() <= 1.0
    assert all(np.array_equal(c[0], c[1]) and np.array_equal(c[0], c[2]) for c in clean[is_gray])
    assert any(not np.array_equal(c[0], c[1]) for c in clean[~is_gray])
    cfg = photo.Config()
    gen = torch.Generator()
    noisy, sigma_in, sigma = photo.noisy_batch(torch.from_numpy(clean), torch.from_numpy(is_gray), cfg, gen)
    assert float(sigma.min()) >= 0 and float(sigma.max()) <= cfg.sigma_max / 255  # the true sigma, for the loss
    n = noisy.numpy()
    assert np.allclose(n * 255, np.round(n * 255), atol=1e-4) and n.min() >= 0 and n.max() <= 1  # 8-bit, clipped
    assert all(np.array_equal(c[0], c[2]) for c in n[is_gray])  # same noise in the 3 gray channels
    assert float(sigma_in.max()) <= (cfg.sigma_max + 6 * cfg.jitter_abs) / 255 * 1.5 and float(sigma_in.min()) >= 0


# ------------------------------------------------------------------------------------------------ sigma estimator


def test_noise_module_imports_only_numpy():
    tree = ast.parse((ROOT / "app" / "core" / "noise.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= {"numpy", "__future__"}, imported


@pytest.mark.parametrize("sigma", [5, 15, 25, 50])
def test_sigma_estimator_tracks_known_sigma(sigma):
    """Within max(1.5, 8 %) of the truth (in 1/255) on a bundled photo, gray and colour, and on a smooth ramp."""
    tolerance = max(1.5, 0.08 * sigma)
    astronaut = next(p for p in load_train_photos() if p.name == "astronaut").image
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    ramp = (0.2 + 0.3 * xx + 0.2 * yy).astype(np.float32)[:, :, None]
    rng = np.random.default_rng(sigma)
    for name, clean in (("astronaut colour", astronaut), ("astronaut gray", astronaut.mean(2, keepdims=True)),
                        ("ramp", ramp)):  # fmt: skip
        noisy = add_noise(clean, sigma / 255, rng)
        est = estimate_sigma(noisy if noisy.shape[2] == 3 else noisy[:, :, 0]) * 255
        assert abs(est - sigma) <= tolerance, (name, est)


def test_sigma_estimator_edge_cases():
    rng = np.random.default_rng(0)
    # Clipping: half the image near black at sigma 50 (a fifth of all pixels clip at 0) is not underestimated:
    # the estimate comes from where the local mean is away from 0 and 1 (a wholly dark image would be, see
    # app/core/noise.py: with no such region every response is used).
    half_dark = np.full((200, 200, 1), 0.5, dtype=np.float32)
    half_dark[:, :100] = 0.05
    noisy = add_noise(half_dark, 50 / 255, rng)
    assert (noisy == 0).mean() > 0.18
    assert abs(estimate_sigma(noisy[:, :, 0]) * 255 - 50) <= 4
    # A gray image fed as 3 identical channels: the same estimate as the single channel, either channel axis.
    gray = add_noise(np.full((64, 64, 1), 0.5, np.float32), 20 / 255, rng)[:, :, 0]
    hwc = np.stack([gray] * 3, axis=2)
    assert estimate_sigma(hwc) == estimate_sigma(gray) == estimate_sigma(hwc.transpose(2, 0, 1), channel_axis=0)
    # A clean flat image: 0; tiny images: 0 rather than an error.
    assert estimate_sigma(np.full((32, 32), 0.4, np.float32)) == 0.0
    assert estimate_sigma(np.zeros((3, 3))) == 0.0
    with pytest.raises(ValueError):
        estimate_sigma(np.zeros((2, 2, 2, 2)))


# ------------------------------------------------------------------------------------------------ quick pipeline


@pytest.fixture(scope="module")
def quick_card(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    card = run("photo", out, make_config("photo", quick=True, overrides={"gray_steps": "6"}))  # with a gray stage
    return out / "photo", card


def test_quick_pipeline_writes_card_and_graph(quick_card):
    folder, card = quick_card
    assert json.loads((folder / CARD_FILE).read_text()) == card
    assert card["kind"] == "photo-denoise" and card["tasks"] == ["denoise"] and card["training"]["quick"]
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "full.onnx", "gray.onnx", "samples.png"]
    graph = card["graphs"]["full"]
    assert [t["name"] for t in graph["inputs"]] == ["x", "sigma"]
    assert graph["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert graph["inputs"][1]["shape"] == ["batch"]
    assert graph["outputs"][0]["name"] == "denoised" and graph["parity"]["max_abs"] <= 1e-4
    assert card["input"]["image"] == {"height": None, "width": None, "channels": 3, "min_side": 2}
    image = card["image"]
    assert image["sigma_input"]["scale"].startswith("standard deviation on the 0..1 pixel scale")
    assert "`gray` graph" in image["gray"]
    gray = card["graphs"]["gray"]
    assert gray["inputs"][0]["shape"] == ["batch", 1, "height", "width"] and gray["parity"]["max_abs"] <= 1e-4
    assert gray["outputs"][0]["shape"] == ["batch", 1, "height", "width"]
    assert card["metrics"]["training"]["gray"]["steps"] == 6
    # The sigma estimator's tracking at 0, 5, 15, 25, 50 and the gates, blind and given sigma, per kind.
    tracking = card["metrics"]["sigma_estimator"]["tracking_255"]
    assert list(tracking) == ["0", "5", "15", "25", "50"]
    for s in ("15", "25", "50"):
        for kind in ("gray", "colour"):
            row = card["metrics"]["by_sigma"][s][kind]
            assert {"model_blind", "model_given_sigma", "noisy_input", "median3x3", "nl_means", "wavelet", "tv"} <= set(
                row
            )
    names = [g["name"] for g in card["metrics"]["gates"]]
    assert sum("NL-means" in n for n in names) == 6
    assert any("clean photo" in n for n in names) and sum("MNIST" in n for n in names) == 3
    assert set(card["metrics"]["mnist"]) >= {"15", "25", "50"}


def test_exported_graph_runs_gray_and_colour_at_dynamic_sizes(quick_card):
    folder, _ = quick_card
    model = onnx.load(folder / "full.onnx")
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"x": ["batch", 3, "height", "width"], "sigma": ["batch"]}
    out_dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", 3, "height", "width"]
    sess = ort.InferenceSession(str(folder / "full.onnx"), providers=["CPUExecutionProvider"])
    gray_sess = ort.InferenceSession(str(folder / "gray.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n, h, w in ((1, 64, 64), (2, 40, 96), (3, 18, 22), (1, 31, 45), (2, 2, 2)):
        colour = rng.random((n, 3, h, w), dtype=np.float32)
        gray = np.repeat(rng.random((n, 1, h, w), dtype=np.float32), 3, axis=1)
        sigma = rng.random(n, dtype=np.float32) * 0.2
        for x in (colour, gray):
            y = sess.run(None, {"x": x, "sigma": sigma})[0]
            assert y.shape == x.shape and y.dtype == np.float32
            assert np.isfinite(y).all() and y.min() >= 0.0 and y.max() <= 1.0
        y = gray_sess.run(None, {"x": gray[:, :1], "sigma": sigma})[0]
        assert y.shape == (n, 1, h, w) and np.isfinite(y).all() and y.min() >= 0.0 and y.max() <= 1.0


def test_untrained_net_is_identity_and_blocks_start_as_identity():
    torch.manual_seed(0)
    net = photo.PhotoDenoiser(16, 3)
    assert net.convolutions == 8
    x, s = torch.rand(2, 3, 20, 26), torch.tensor([0.1, 0.0])
    assert torch.equal(net.eval()(x, s), x)  # the last convolution starts at zero: predicted noise 0
    h = torch.rand(1, 16, 8, 8)
    for block in net.blocks:  # each residual block's second convolution starts at zero
        assert torch.equal(block(h), h)
    with torch.no_grad():
        net.tail.weight.normal_(0, 0.05)
    y = net(x, s)  # a trained output layer: the noise is subtracted and the result kept in [0, 1], odd sides too
    assert y.shape == x.shape and not torch.equal(y, x) and y.min() >= 0.0 and y.max() <= 1.0


def test_the_gray_copy_computes_the_joint_network_on_gray_images():
    """`gray_copy`: a 1-channel network equal to the joint one fed 3 identical channels, averaged back (before the
    clip), so the gray fine-tune starts where the joint network is."""
    torch.manual_seed(1)
    net = photo.PhotoDenoiser(16, 2)
    with torch.no_grad():
        for conv in (net.tail, *(b.conv2 for b in net.blocks)):
            conv.weight.normal_(0, 0.05)
            conv.bias.normal_(0, 0.01)
    gray = photo.gray_copy(net)
    assert gray.colours == 1 and gray.head.in_channels == 5 and gray.tail.out_channels == 4
    x, s = torch.rand(2, 1, 21, 34) * 0.6 + 0.2, torch.tensor([0.05, 0.2])
    with torch.no_grad():
        padded = F.pad(x, (0, 0, 0, 1), mode="reflect")
        want = net.noise(padded.expand(-1, 3, -1, -1), s).mean(1, keepdim=True)
        assert torch.allclose(gray.noise(padded, s), want, atol=1e-6)


def test_the_gray_stage_has_its_own_schedule_checkpoint_and_starting_point(tmp_path, caplog):
    cfg = _quick_cfg(tmp_path, "j.pt")
    cfg.given = ["gray_lr", "jitter_fraction", "steps"]
    gcfg = photo.gray_config(cfg)
    assert gcfg.checkpoint == str(tmp_path / "j-gray.pt") and gcfg.gray_fraction == 1.0
    assert (gcfg.steps, gcfg.minutes, gcfg.lr) == (cfg.gray_steps, cfg.gray_minutes, cfg.gray_lr)
    assert sorted(gcfg.given) == ["gray_lr", "jitter_fraction", "lr"]  # gray_lr given: the stage's lr is given
    photos_ = load_train_photos(debian=False)[:3]
    joint = photo.train_loop(cfg, photos_)
    with caplog.at_level("INFO", logger="training"):
        state = photo.train_loop(gcfg, photos_, start=photo.gray_copy(joint.net))
    assert state.finished and state.net.colours == 1 and "photo (gray): starting point" in caplog.text
    saved = torch.load(tmp_path / "j-gray.pt", weights_only=False)
    assert saved["colours"] == 1 and saved["step"] == 6
    with pytest.raises(ValueError, match="1-channel network's checkpoint, not 3"):
        photo.train_loop(dataclasses.replace(gcfg, resume=True), photos_)


# ------------------------------------------------------------------------------------------------ checkpoints


def _quick_cfg(tmp_path: Path, name: str, **kw) -> photo.Config:
    cfg = make_config("photo", quick=True, overrides={"checkpoint": str(tmp_path / name), "val_every": "2"})
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_resume_continues_exactly_from_the_saved_step(tmp_path):
    photos = load_train_photos()[:3]
    straight = photo.train_loop(_quick_cfg(tmp_path, "a.pt"), photos)
    assert straight.finished and straight.step == 6
    first = photo.train_loop(_quick_cfg(tmp_path, "b.pt"), photos, run_steps=3)  # then "killed"
    assert not first.finished
    saved = torch.load(tmp_path / "b.pt", weights_only=False)
    assert saved["step"] == 3 and not saved["finished"] and saved["config"]["quick_steps"] == 6
    with pytest.raises(ValueError, match="--resume"):  # an existing checkpoint is never overwritten silently
        photo.train_loop(_quick_cfg(tmp_path, "b.pt"), photos)
    resumed = photo.train_loop(_quick_cfg(tmp_path, "b.pt", resume=True), photos)
    assert resumed.finished and resumed.step == 6
    a = torch.load(tmp_path / "a.pt", weights_only=False)
    b = torch.load(tmp_path / "b.pt", weights_only=False)
    assert b["step"] == 6 and b["finished"]
    # Same weights, optimizer moments and history as the run that was never interrupted.
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [h["val_psnr_db"] for h in a["history"]] == [h["val_psnr_db"] for h in b["history"]]
    exp_a = a["optimizer"]["state"][0]["exp_avg_sq"]
    assert torch.equal(exp_a, b["optimizer"]["state"][0]["exp_avg_sq"])
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_with_new_photographs_measures_the_best_again(tmp_path, caplog):
    """Adding training photographs changes the validation patches: the resumed run re-measures its best on the new
    ones instead of comparing later steps with a number from other patches."""
    bundled = load_train_photos(debian=False)
    photo.train_loop(_quick_cfg(tmp_path, "c.pt"), bundled[:3], run_steps=3)
    assert torch.load(tmp_path / "c.pt", weights_only=False)["photos"] == [p.name for p in bundled[:3]]
    with caplog.at_level("INFO", logger="training"):
        resumed = photo.train_loop(_quick_cfg(tmp_path, "c.pt", resume=True), bundled[:4])
    assert resumed.finished and resumed.step == 6
    assert "training photographs changed (3 -> 4); best so far re-measured" in caplog.text
    saved = torch.load(tmp_path / "c.pt", weights_only=False)
    assert saved["photos"] == [p.name for p in bundled[:4]] and saved["best"]["step"] >= 3
    # The other way is refused: the network has learned from photographs the card would no longer name.
    with pytest.raises(ValueError, match=r"trained on 2 photographs this run leaves out \(chelsea, rocket\)"):
        photo.train_loop(_quick_cfg(tmp_path, "c.pt", resume=True, steps=8), [bundled[0], *bundled[3:5]])


def test_a_resumed_run_keeps_what_the_command_line_sets(tmp_path, caplog):
    """`--resume --set gray_fraction=0.7` fine-tunes: the value wins over the checkpoint's and is saved, so a later
    plain `--resume` keeps it; fields the command line does not set come from the checkpoint."""
    photos_ = load_train_photos(debian=False)[:3]
    first = _quick_cfg(tmp_path, "f.pt", jitter_fraction=0.25)
    photo.train_loop(first, photos_, run_steps=2)
    base = {"checkpoint": str(tmp_path / "f.pt"), "val_every": "2"}
    tune = make_config("photo", quick=True, overrides={**base, "gray_fraction": "0.7", "loss_sigma_floor": "5"})
    tune.resume = True
    with caplog.at_level("INFO", logger="training"):
        photo.train_loop(tune, photos_, run_steps=2)
    assert "resumed with checkpoint=" in caplog.text and "gray_fraction=0.7" in caplog.text
    saved = torch.load(tmp_path / "f.pt", weights_only=False)
    assert saved["step"] == 4 and saved["config"]["gray_fraction"] == 0.7 and saved["config"]["loss_sigma_floor"] == 5
    assert saved["config"]["jitter_fraction"] == 0.25  # not given: the checkpoint's value
    plain = make_config("photo", quick=True, overrides=base)
    plain.resume = True
    state = photo.train_loop(plain, photos_)
    assert state.finished and state.step == 6
    assert (plain.gray_fraction, plain.loss_sigma_floor, plain.jitter_fraction) == (0.7, 5.0, 0.25)
    wider = make_config("photo", quick=True, overrides={**base, "channels": "32"})
    wider.resume = True
    with pytest.raises(ValueError, match="cannot change channels"):
        photo.train_loop(wider, photos_)


def test_patch_loss_weights_low_noise_patches_up():
    clean = torch.zeros(2, 3, 4, 4)
    out = torch.stack([torch.full((3, 4, 4), 0.01), torch.full((3, 4, 4), 0.05)])
    sigma = torch.tensor([0.0, 50.0 / 255.0])
    assert torch.equal(photo.patch_loss(out, clean, sigma, 0.0), torch.nn.functional.mse_loss(out, clean))
    w = torch.tensor([1 / 10.0**2, 1 / 60.0**2])
    expected = (w * torch.tensor([0.01**2, 0.05**2])).sum() / w.sum()
    assert torch.allclose(photo.patch_loss(out, clean, sigma, 10.0), expected, rtol=1e-5)
    # the low-noise patch (error 1e-4) now weighs 36x the sigma-50 one: the loss sits near its error, not the mean
    assert float(photo.patch_loss(out, clean, sigma, 10.0)) < 0.5 * float(torch.nn.functional.mse_loss(out, clean))


def test_cli_resume(tmp_path, capsys):
    ckpt = tmp_path / "ck.pt"
    out = tmp_path / "models"
    args = ["photo", "--quick", "--out", str(out), "--set", f"checkpoint={ckpt}", "--set", "bm3d=false"]
    assert main([*args, "--resume"]) == 0  # no checkpoint yet: starts, trains, exports
    assert torch.load(ckpt, weights_only=False)["step"] == 6
    assert main(args) == 2  # without --resume an existing checkpoint is an error, not overwritten
    assert "--resume" in capsys.readouterr().err
    assert (out / "photo" / CARD_FILE).exists()
    assert main(["dense", "--quick", "--resume", "--out", str(out)]) == 2
    assert "no checkpoints" in capsys.readouterr().err


def test_all_does_not_train_photo():
    assert "photo" in registry.MODELS and "photo" not in registry.ALL
    assert set(registry.ALL) == set(registry.MODELS) - {"photo"}


def test_the_exported_model_serves_through_the_service(quick_card):
    """The exporter's `photo` (quick-trained) loads in the service as it is and denoises a colour upload in colour,
    a gray one in gray, in tiles when large, with the noise level estimated or given and reported."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from app.main import create_app
    from app.settings import Settings

    folder, _ = quick_card
    with TestClient(create_app(Settings(models_dir=folder.parent, tile_size=64, log_level="warning"))) as client:
        graph = client.app.state.context.registry.serving("photo").graphs["full"]
        assert graph.receptive_radius is not None and graph.receptive_radius > 0
        rgb = np.random.default_rng(12).integers(0, 256, (96, 136, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        answer = client.post(
            "/v1/models/photo/denoise", content=buffer.getvalue(), headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-sigma-source"] == "estimated" and float(answer.headers["x-sigma"]) >= 0
        image = Image.open(io.BytesIO(answer.content))
        assert image.mode == "RGB" and image.size == (136, 96)
        gray = client.post(
            "/v1/models/photo/denoise?sigma=15",
            content=_png(rgb[..., 0]),
            headers={"content-type": "image/png"},
        )
        assert gray.status_code == 200 and Image.open(io.BytesIO(gray.content)).mode == "L"
        assert gray.headers["x-sigma"] == "15.00" and gray.headers["x-sigma-source"] == "given"


def _png(pixels):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
