"""photo: a residual convolutional denoiser for natural photographs, gray and colour, blind for sigma 0..55.

FFDNet-style (Zhang, Zuo, Zhang 2018), with DnCNN's residual output:

- input `x` [N, 3, H, W] in [0, 1] (a gray image goes in as 3 identical channels) and the noise level `sigma`
  [N] on the 0..1 scale (sigma / 255), which the graph broadcasts into a noise-level map;
- odd H or W is reflect-padded by one pixel in the graph and cropped back, so any H, W >= 2 works;
- 2x2 pixel-unshuffle (12 channels) + the noise map -> a 3x3 convolution to `channels` channels, ReLU ->
  `blocks` residual blocks (conv3x3, ReLU, conv3x3, plus the block's input) -> ReLU, 3x3 convolution to 12
  channels -> pixel-shuffle: the predicted noise, subtracted from the input; the result is clipped to [0, 1] in
  the graph.

Why residual blocks: the first design, FFDNet's plain stack of 12 convolutions x 96 channels with BatchNorm,
learned gray noise and almost no colour noise in 2,000 steps (~2 h here): held-out coffee at sigma 25 went from
21.1 to 22.8 dB while gray camera went to 28.4. Pilots on the same patches (64 x 64, batch 32, Adam 1e-3) showed
why: plain stacks of 8 and more convolutions sit still for hundreds of steps and pick up colour last, while the
same depth in residual blocks whose second convolution starts at zero (each block the identity at first) learns
gray and colour from the first steps (64 channels, 4 blocks: colour patches 28.8 dB at sigma 25 after 400 steps,
where 64 x 8 plain reached 21.8).

Training: random patches of the bundled training photographs (`training/data/photos.py`; the held-out camera,
coins, coffee and flower are never seen), 8 flips/rotations, gray patches (also from colour photographs) with
the same noise in the 3 channels and colour patches with independent noise per channel, sigma uniform in
[0, sigma_max] / 255 per patch (a fraction at exactly 0), noise rounded to 8 bits and clipped to [0, 1]. The
sigma given to the network is jittered around the true one for part of each batch so it tolerates the blind
estimator's errors (`app/core/noise.py`). MSE loss, Adam, warm-up then cosine decay over the planned run, where
the run's progress is the larger of steps / `steps` and training time / `minutes`.

Long runs checkpoint to `checkpoint` every `checkpoint_minutes` (model, optimizer, step, training time, RNG
states, best weights, config; written atomically) and `python -m training photo --resume` continues from it.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from app.core.images import identical_channels
from app.core.noise import estimate_sigma
from training import photo_eval
from training.baselines import psnr as mean_psnr
from training.common import FitResult, TrainConfig, seed_everything
from training.data.photos import (
    DEBIAN_PHOTOS,
    HELD_OUT,
    HELD_OUT_COLOUR,
    HELD_OUT_GRAY,
    PatchSampler,
    Photo,
    load_held_out,
    load_photos,
    load_train_photos,
    near_duplicates,
    provenance,
)
from training.export import GraphSpec, TensorSpec
from training.spec import DataOptions, Gate, Trained

NAME = "photo"
KIND = "photo-denoise"
MIN_SIDE = 2
CHECKPOINT_FORMAT = 2  # 1: the plain BatchNorm stack (see the card's notes)
DEFAULT_CHECKPOINT = "runs/photo/checkpoint.pt"
# Fields a resumed run always takes from the command line. Every other field comes from the checkpoint unless the
# command line sets it (`--set gray_fraction=0.6`: a fine-tune; the checkpoint then records the new value), except
# the fields that shape the network or its data stream, which a resumed run cannot change.
RESUME_OVERRIDES = (
    "steps",
    "minutes",
    "gray_steps",
    "gray_minutes",
    "checkpoint",
    "checkpoint_minutes",
    "threads",
    "resume",
    "bm3d",
    "quick",
)
FIXED_ON_RESUME = ("channels", "blocks", "seed")
NLMEANS_MARGIN_DB = 0.5
CHECK_CROP = 256  # side of the check photographs' central crops
CLEAN_TARGET_DB = 40.0

log = logging.getLogger("training")


@dataclass
class Config(TrainConfig):
    channels: int = 64
    blocks: int = 6  # residual blocks of two 3x3 convolutions, at half resolution (14 convolutions in all)
    patch: int = 64  # training patch side (full resolution, even)
    batch_size: int = 32
    lr: float = 1e-3
    lr_min: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    steps: int = 16000  # planned optimizer steps (the LR schedule's length unless `minutes` ends first)
    minutes: float = 180.0  # training time budget over all resumed runs (issue 14: ~3 hours here); 0: steps only
    sigma_max: float = 55.0  # on the 0..255 scale
    zero_sigma_fraction: float = 0.05
    gray_fraction: float = 0.6  # the gray held-out photographs are where BM3D is closest
    # Train on the Debian packages' photographs too (`training/data/debian_photos.py`). Off: issue 14's data rule
    # trains on the photographs bundled in scikit-image and scikit-learn only ("any other photographs you find are
    # for checking, never for training"); the Debian ones are then an extra check set in the eval.
    debian: bool = False
    jitter_fraction: float = 0.5  # share of patches whose sigma input is perturbed
    jitter_rel: float = 0.1  # log-normal relative jitter (std)
    jitter_abs: float = 1.5  # plus Gaussian jitter of this std, on the 0..255 scale
    # 0: plain MSE. Else each patch's squared error is weighted by 1 / (sigma + floor)^2 (sigma on the 0..255 scale;
    # weights normalised to mean 1 in the batch), so low-noise patches, whose errors are small, are not drowned out
    # by high-noise ones: the loss then follows PSNR at every sigma rather than the squared error.
    loss_sigma_floor: float = 10.0
    # The gray specialist (second stage): a 1-channel copy of the trained network (`gray_copy`: the same function on
    # gray input), fine-tuned on gray patches only and exported as the `gray` graph, which the service runs for gray
    # images. 0 steps: no gray graph. Its own schedule (warm-up to `gray_lr`, cosine to `lr_min`) and checkpoint
    # (`checkpoint`'s name + "-gray"). Off by default: measured on the 412-min network (2026-12-05, 86 of a planned
    # 120 minutes, 2,393 steps at up to 2e-4), it never beat its starting point on the validation patches (34.92 dB
    # best vs 34.94 at the start) nor the joint network on the held-out gray photographs (sigma 15: 31.11-31.26 dB
    # vs 31.13; sigma 25: 29.09-29.16 vs 29.09; BM3D 31.49 / 29.13).
    gray_steps: int = 0
    gray_minutes: float = 150.0
    gray_lr: float = 2e-4
    val_patches: int = 48
    val_patch: int = 96
    val_every: int = 250  # steps
    given: list[str] = field(default_factory=list)  # fields set on the command line: a resumed run keeps them too
    checkpoint: str = DEFAULT_CHECKPOINT
    checkpoint_minutes: float = 5.0
    resume: bool = False
    bm3d: bool = True  # include BM3D in the eval when the (non-commercial) bm3d package is installed
    # Quick mode: a few steps on small patches, eval on central crops of the held-out photographs.
    quick_steps: int = 6
    quick_patch: int = 32
    quick_crop: int = 64
    quick_photos: int = 3


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, added to its input. The second convolution starts at zero, so every block starts
    as the identity (SkipInit): a deep stack trains from the first step."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.kaiming_normal_(self.conv1.weight, nonlinearity="relu")
        nn.init.zeros_(self.conv1.bias)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(F.relu(self.conv1(h)))


class PhotoDenoiser(nn.Module):
    """`colours` 3: RGB (the joint network); 1: gray (the specialist, `gray_copy`)."""

    def __init__(self, channels: int, blocks: int, colours: int = 3):
        super().__init__()
        self.colours = colours
        self.head = nn.Conv2d(4 * colours + 1, channels, 3, padding=1)
        nn.init.kaiming_normal_(self.head.weight, nonlinearity="relu")
        nn.init.zeros_(self.head.bias)
        self.blocks = nn.Sequential(*(ResBlock(channels) for _ in range(blocks)))
        self.tail = nn.Conv2d(channels, 4 * colours, 3, padding=1)
        # The last layer starts at zero: the untrained network predicts no noise (the identity).
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def noise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The predicted noise of x [N, colours, H, W] (H, W even) at noise level sigma [N]."""
        down = F.pixel_unshuffle(x, 2)
        level = sigma.reshape(-1, 1, 1, 1) * torch.ones_like(down[:, :1])
        h = self.blocks(F.relu(self.head(torch.cat([down, level], dim=1))))
        return F.pixel_shuffle(self.tail(F.relu(h)), 2)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        padded = F.pad(x, (0, w % 2, 0, h % 2), mode="reflect")
        return (padded - self.noise(padded, sigma)).clamp(0.0, 1.0)[:, :, :h, :w]

    @property
    def convolutions(self) -> int:
        return 2 + 2 * len(self.blocks)


@torch.no_grad()
def gray_copy(net: PhotoDenoiser) -> PhotoDenoiser:
    """A 1-channel network computing what `net` computes on a gray image given as 3 identical channels, averaged
    back to one (exactly, before the output clip): after the 2x2 pixel-unshuffle, colour c's sub-pixel k is input
    channel 4c + k, so the head's weights for those sum over c; the tail's outputs for them average over c."""
    gray = PhotoDenoiser(net.head.out_channels, len(net.blocks), colours=1)
    gray.load_state_dict(
        {k: v for k, v in net.state_dict().items() if not k.startswith(("head.", "tail."))}, strict=False
    )
    head = net.head.weight
    gray.head.weight.copy_(torch.cat([head[:, 0:12].reshape(head.shape[0], 3, 4, 3, 3).sum(1), head[:, 12:13]], 1))
    gray.head.bias.copy_(net.head.bias)
    tail = net.tail.weight
    gray.tail.weight.copy_(tail.reshape(3, 4, *tail.shape[1:]).mean(0))
    gray.tail.bias.copy_(net.tail.bias.reshape(3, 4).mean(0))
    return gray


def gray_config(cfg: Config) -> Config:
    """The gray stage's training config: `cfg` with the gray schedule, gray patches only and its own checkpoint."""
    given = [k for k in cfg.given if k not in ("steps", "minutes", "lr", "gray_fraction")]
    given += [
        plain
        for gray, plain in (("gray_steps", "steps"), ("gray_minutes", "minutes"), ("gray_lr", "lr"))
        if gray in cfg.given
    ]
    path = Path(cfg.checkpoint) if cfg.checkpoint else None
    return dataclasses.replace(
        cfg,
        steps=cfg.gray_steps,
        minutes=cfg.gray_minutes,
        lr=cfg.gray_lr,
        gray_fraction=1.0,
        checkpoint=str(path.with_name(f"{path.stem}-gray{path.suffix}")) if path else "",
        given=given,
    )


# ---------------------------------------------------------------------------------------------------- training


def noisy_batch(
    clean: torch.Tensor, is_gray: torch.Tensor, cfg: Config, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy batch, sigma input [N], true sigma [N]) for clean patches [N, 3, P, P]; see the module docstring."""
    n = clean.shape[0]
    sigma = torch.rand(n, generator=gen) * (cfg.sigma_max / 255.0)
    sigma = torch.where(torch.rand(n, generator=gen) < cfg.zero_sigma_fraction, torch.zeros_like(sigma), sigma)
    noise = torch.randn(clean.shape, generator=gen)
    noise = torch.where(is_gray[:, None, None, None], noise[:, :1].expand_as(noise), noise)
    noisy = (torch.round((clean + sigma[:, None, None, None] * noise) * 255.0) / 255.0).clamp_(0.0, 1.0)
    rel = torch.exp(cfg.jitter_rel * torch.randn(n, generator=gen))
    add = (cfg.jitter_abs / 255.0) * torch.randn(n, generator=gen)
    jittered = (sigma * rel + add).clamp_(min=0.0)
    use = torch.rand(n, generator=gen) < cfg.jitter_fraction
    return noisy, torch.where(use, jittered, sigma), sigma


def patch_loss(denoised: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor, floor_255: float) -> torch.Tensor:
    """Plain MSE (`floor_255` 0), else per-patch MSE weighted by 1 / (sigma * 255 + floor)^2, weights of mean 1."""
    if floor_255 <= 0:
        return F.mse_loss(denoised, clean)
    per_patch = (denoised - clean).pow(2).mean(dim=(1, 2, 3))
    weights = (sigma * 255.0 + floor_255).pow(-2)
    return (per_patch * weights).sum() / weights.sum()


def make_val_set(photos: list[Photo], cfg: Config, patch: int, count: int) -> tuple[torch.Tensor, ...]:
    """Fixed validation patches from the training photographs at sigma 15, 25, 50 (true sigma given)."""
    sampler = PatchSampler(photos, patch, cfg.gray_fraction, seed=cfg.seed + 7919)
    clean, is_gray = sampler.sample(count)
    gen = torch.Generator().manual_seed(cfg.seed + 104729)
    sigma = torch.tensor([(15.0, 25.0, 50.0)[i % 3] / 255.0 for i in range(count)])
    noise = torch.randn(clean.shape, generator=gen)
    g = torch.from_numpy(is_gray)
    noise = torch.where(g[:, None, None, None], noise[:, :1].expand_as(noise), noise)
    c = torch.from_numpy(clean)
    noisy = (torch.round((c + sigma[:, None, None, None] * noise) * 255.0) / 255.0).clamp_(0.0, 1.0)
    return c, noisy, sigma


@torch.no_grad()
def val_psnr(net: PhotoDenoiser, val: tuple[torch.Tensor, ...]) -> float:
    clean, noisy, sigma = val
    net.eval()
    out = torch.cat([net(noisy[i : i + 16], sigma[i : i + 16]) for i in range(0, len(noisy), 16)])
    net.train()
    return mean_psnr(clean.numpy(), out.numpy())


def learning_rate(cfg: Config, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def progress_of(cfg: Config, step: int, seconds: float) -> float:
    by_steps = step / max(cfg.steps, 1)
    by_time = seconds / (cfg.minutes * 60.0) if cfg.minutes > 0 else 0.0
    return max(by_steps, by_time)


@dataclass
class LoopState:
    net: PhotoDenoiser
    step: int
    train_seconds: float
    best_val_psnr: float
    best_step: int
    history: list[dict]
    finished: bool


def _save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def checkpoint_path(cfg: Config) -> Path | None:
    """Quick runs do not checkpoint unless given a path of their own (they must not touch a real run's)."""
    default = Path(DEFAULT_CHECKPOINT)
    if cfg.quick and cfg.checkpoint in (str(default), str(default.with_name(f"{default.stem}-gray{default.suffix}"))):
        return None
    return Path(cfg.checkpoint) if cfg.checkpoint else None


def train_loop(
    cfg: Config, photos: list[Photo], run_steps: int | None = None, start: PhotoDenoiser | None = None
) -> LoopState:
    """Train (or continue training) until the planned progress is reached; `run_steps` stops this call after that
    many steps with a checkpoint written (what a kill after the checkpoint would leave). `start`: the network to
    fine-tune (the gray stage: `gray_copy` of the joint network, with `gray_config`), else a new one."""
    colours = start.colours if start is not None else 3
    label = "photo" if colours == 3 else "photo (gray)"
    ckpt = checkpoint_path(cfg)
    saved = None
    if ckpt is not None and ckpt.exists():
        if not cfg.resume:
            raise ValueError(
                f"{ckpt} exists: pass --resume to continue that run, or delete it (or --set checkpoint=...) "
                "to start a new one"
            )
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt}: checkpoint format {saved.get('format')} is not {CHECKPOINT_FORMAT}")
        if saved.get("colours", 3) != colours:
            raise ValueError(f"{ckpt}: a {saved.get('colours', 3)}-channel network's checkpoint, not {colours}")
        changed = [k for k in FIXED_ON_RESUME if k in cfg.given and getattr(cfg, k) != saved["config"].get(k)]
        if changed:
            raise ValueError(f"{ckpt}: a resumed run cannot change {', '.join(changed)} (start a new run)")
        for key, value in saved["config"].items():
            if key not in RESUME_OVERRIDES and key not in cfg.given and key != "given" and hasattr(cfg, key):
                setattr(cfg, key, value)
        if cfg.given:
            log.info("%s: resumed with %s", label, ", ".join(f"{k}={getattr(cfg, k)}" for k in cfg.given))
    quick = cfg.quick
    patch = cfg.quick_patch if quick else cfg.patch
    seed_everything(cfg.seed, cfg.threads)
    net = copy.deepcopy(start) if start is not None else PhotoDenoiser(cfg.channels, cfg.blocks)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = PatchSampler(photos, patch, cfg.gray_fraction, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    val = make_val_set(photos, cfg, cfg.quick_patch if quick else cfg.val_patch, 6 if quick else cfg.val_patches)
    val = (val[0][:, :colours], val[1][:, :colours], val[2])
    names = [p.name for p in photos]
    step, seconds, history = 0, 0.0, []
    best_val, best_step, best_state = -math.inf, 0, copy.deepcopy(net.state_dict())
    if start is not None and saved is None:  # a fine-tune keeps its starting point unless it beats it
        best_val = val_psnr(net, val)
        log.info("%s: starting point %.2f dB", label, best_val)
    if saved is not None:
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sampler.rng.bit_generator.state = saved["rng"]["sampler"]
        gen.set_state(saved["rng"]["noise"])
        torch.set_rng_state(saved["rng"]["torch"])
        step, seconds, history = saved["step"], saved["train_seconds"], saved["history"]
        best_val, best_step, best_state = saved["best"]["val_psnr"], saved["best"]["step"], saved["best"]["model"]
        log.info("%s: resumed from %s at step %d (%.1f min of training)", label, ckpt, step, seconds / 60)
        dropped = sorted(set(saved.get("photos") or []) - set(names))
        if dropped:
            # The network has learned from these; a card listing only this run's photographs would misstate its data.
            raise ValueError(
                f"{ckpt} was trained on {len(dropped)} photographs this run leaves out ({', '.join(dropped[:5])}"
                f"{', ...' if len(dropped) > 5 else ''}): resume with the same set (e.g. --set debian=true) or start "
                "a new run (--set checkpoint=...)"
            )
        if saved.get("photos") != names:
            # New training photographs: the validation patches (cut from them) changed, so the best so far is
            # measured again on the new ones before later steps are compared with it.
            best_val, best_step, best_state = val_psnr(net, val), step, copy.deepcopy(net.state_dict())
            log.info(
                "%s: training photographs changed (%d -> %d); best so far re-measured: %.2f dB at step %d",
                label,
                len(saved.get("photos") or []),
                len(names),
                best_val,
                step,
            )
    total_steps = cfg.quick_steps if quick else cfg.steps
    plan = dataclasses.replace(cfg, steps=total_steps, minutes=0.0 if quick else cfg.minutes)
    rewarm = None  # (from step, from lr): a resumed run whose longer plan raises the LR warms up to it again
    if saved is not None and step >= cfg.warmup_steps:
        planned = learning_rate(cfg, step, progress_of(plan, step, seconds))
        if planned > 1.5 * saved["scheduler"]["lr"]:
            # Jumping straight from the end of a cosine (1e-5) to ~5e-4 killed the network in under 100 steps
            # (every ReLU dead, output = input); a linear warm-up over `warmup_steps` does not.
            rewarm = (step, saved["scheduler"]["lr"])
            log.info(
                "%s: longer plan: LR warms up from %.2e to %.2e over %d steps",
                label,
                rewarm[1],
                planned,
                cfg.warmup_steps,
            )

    def payload(finished: bool) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "colours": colours,
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": {
                "kind": "linear warm-up, then cosine from lr to lr_min over progress",
                "progress": progress_of(plan, step, seconds),
                "lr": opt.param_groups[0]["lr"],
            },
            "step": step,
            "train_seconds": seconds,
            "rng": {
                "sampler": sampler.rng.bit_generator.state,
                "noise": gen.get_state(),
                "torch": torch.get_rng_state(),
            },
            "best": {"val_psnr": best_val, "step": best_step, "model": best_state},
            "history": history,
            "config": dataclasses.asdict(cfg),
            "photos": names,
            "finished": finished,
        }

    net.train()
    steps_this_run, loss_sum, loss_count = 0, 0.0, 0
    last_ckpt = last_log = time.monotonic()
    while progress_of(plan, step, seconds) < 1.0:
        if run_steps is not None and steps_this_run >= run_steps:
            if ckpt is not None:
                _save_checkpoint(ckpt, payload(False))
            return LoopState(net, step, seconds, best_val, best_step, history, False)
        t0 = time.monotonic()
        lr = learning_rate(cfg, step, progress_of(plan, step, seconds))
        if rewarm is not None and step - rewarm[0] < cfg.warmup_steps:
            lr = rewarm[1] + (lr - rewarm[1]) * (step - rewarm[0] + 1) / cfg.warmup_steps
        for group in opt.param_groups:
            group["lr"] = lr
        clean, is_gray = sampler.sample(cfg.batch_size)
        clean_t = torch.from_numpy(clean)
        noisy, sigma_in, sigma = noisy_batch(clean_t, torch.from_numpy(is_gray), cfg, gen)
        if colours == 1:  # gray patches: 3 identical channels
            noisy, clean_t = noisy[:, :1].contiguous(), clean_t[:, :1].contiguous()
        opt.zero_grad(set_to_none=True)
        loss = patch_loss(noisy - net.noise(noisy, sigma_in), clean_t, sigma, cfg.loss_sigma_floor)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        steps_this_run += 1
        loss_sum += loss.item()
        loss_count += 1
        done = progress_of(plan, step, seconds + time.monotonic() - t0) >= 1.0
        if step % cfg.val_every == 0 or done:
            v = val_psnr(net, val)
            history.append({"step": step, "train_loss": loss_sum / loss_count, "val_psnr_db": v, "lr": lr})
            if v > best_val:
                best_val, best_step, best_state = v, step, copy.deepcopy(net.state_dict())
        seconds += time.monotonic() - t0
        now = time.monotonic()
        if now - last_log >= 60 or done:
            log.info(
                "%s: step %d  loss %.3e  lr %.2e  %.2f s/step  %.1f/%.0f min  val %s (best %.2f dB at %d)",
                label,
                step,
                loss_sum / max(loss_count, 1),
                lr,
                (now - last_log) / max(loss_count, 1),
                seconds / 60,
                plan.minutes,
                f"{history[-1]['val_psnr_db']:.2f} dB" if history else "-",
                best_val,
                best_step,
            )
            loss_sum, loss_count, last_log = 0.0, 0, now
        if ckpt is not None and (now - last_ckpt >= cfg.checkpoint_minutes * 60 or done):
            _save_checkpoint(ckpt, payload(done))
            last_ckpt = now
    if ckpt is not None and (saved is None or not saved.get("finished") or steps_this_run):
        _save_checkpoint(ckpt, payload(True))
    net.load_state_dict(best_state)
    net.eval()
    return LoopState(net, step, seconds, best_val, best_step, history, True)


# ---------------------------------------------------------------------------------------------------- evaluation


def torch_denoiser(net: nn.Module, gray: nn.Module | None = None) -> photo_eval.Denoiser:
    """[N, 3, H, W] -> denoised, as the service runs the model: a batch of gray images (3 identical channels) goes
    through the gray graph when there is one, on one channel, and comes back as 3 identical channels."""

    def fn(x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            if gray is not None and identical_channels(x):
                out = gray(torch.from_numpy(np.ascontiguousarray(x[:, :1])), torch.from_numpy(sigma)).numpy()
                return np.repeat(out, 3, axis=1)
            return net(torch.from_numpy(x), torch.from_numpy(sigma)).numpy()

    return fn


def _center_crop(photo: Photo, side: int) -> Photo:
    h, w = photo.image.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return Photo(photo.name, photo.image[y : y + side, x : x + side])


def clean_photos_check(fn: photo_eval.Denoiser, photos: list[Photo]) -> dict:
    """A clean (noise-free) photograph through the model: blind (sigma estimated) and with sigma 0."""
    out = {}
    for p in photos:
        est = estimate_sigma(p.image if p.is_colour else p.image[:, :, 0])
        out[p.name] = {
            "estimated_sigma_255": est * 255.0,
            "blind_psnr_db": photo_eval.psnr(p.image, photo_eval.run_denoiser(fn, p.image, est)),
            "sigma0_psnr_db": photo_eval.psnr(p.image, photo_eval.run_denoiser(fn, p.image, 0.0)),
        }
    return out


def mnist_check(fn: photo_eval.Denoiser, data: DataOptions, quick: bool) -> dict:
    """Test digits with 8-bit Gaussian noise: the model (blind and given sigma) vs the noisy input."""
    from training.data.mnist import load_mnist

    x = load_mnist(data.mnist_dir, data.seed).test.x
    x = x[:64] if quick else x
    out = {}
    for s in photo_eval.GATE_SIGMAS:
        rng = np.random.default_rng([77, s])
        noisy = np.clip(np.round((x + rng.normal(0, s / 255.0, x.shape)) * 255) / 255, 0, 1).astype(np.float32)
        est = np.array([estimate_sigma(n) for n in noisy], dtype=np.float32)
        batch = np.repeat(noisy[:, None], 3, axis=1)
        blind = np.concatenate([fn(batch[i : i + 250], est[i : i + 250]) for i in range(0, len(x), 250)]).mean(1)
        given_s = np.full(len(x), s / 255.0, dtype=np.float32)
        given = np.concatenate([fn(batch[i : i + 250], given_s[i : i + 250]) for i in range(0, len(x), 250)]).mean(1)
        out[str(s)] = {
            "model_blind_psnr_db": mean_psnr(x, blind),
            "model_given_sigma_psnr_db": mean_psnr(x, given),
            "noisy_input_psnr_db": mean_psnr(x, noisy),
            "mean_estimated_sigma_255": float(est.mean() * 255),
        }
    out["digits"] = len(x)
    out["note"] = "MNIST test digits (28 x 28, white on black), 3 identical channels; mean per-image PSNR"
    return out


def check_photos_eval(fn: photo_eval.Denoiser, photos: list[Photo], use_bm3d: bool, crop: int = CHECK_CROP) -> dict:
    """The photographs the model was not trained on beyond the held-out four (issue 14: "any other photographs you
    find are for checking, never for training"): central crops, the model (blind and given sigma) beside the noisy
    input, NL-means and BM3D (when run). A check, not a gate: what the held-out gate says, on more pictures."""
    methods = ("nl_means", "bm3d") if use_bm3d else ("nl_means",)
    result = photo_eval.evaluate(fn, [_center_crop(p, crop) for p in photos], methods=methods)
    return {
        "what": f"central {crop} x {crop} crops of photographs never trained on (the Debian packages' photographs: "
        "training/data/photos.py DEBIAN_PHOTOS), a check beside the held-out gate",
        "photos": [p.name for p in photos],
        "by_sigma": result["by_sigma"],
    }


def onnx_seconds_1024(net: PhotoDenoiser, threads: int = 2) -> float:
    """Median ONNX Runtime time of one 1024 x 1024 colour image on `threads` intra-op threads."""
    import onnxruntime as ort

    from training.export import _export_bytes

    spec = export_spec(net, [(np.zeros((1, 3, 64, 64), np.float32), np.zeros(1, np.float32))])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(_export_bytes(spec), opts, providers=["CPUExecutionProvider"])
    feed = {
        "x": np.random.default_rng(0).random((1, 3, 1024, 1024), dtype=np.float32),
        "sigma": np.full(1, 0.1, np.float32),
    }
    times = []
    for _ in range(3):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def samples_png(fn: photo_eval.Denoiser, photos: list[Photo], sigma255: int = 25, side: int = 160) -> bytes:
    """Rows of noisy / denoised (blind) / clean central crops of the held-out photographs."""
    rows = []
    for index, p in enumerate(photos):
        crop = _center_crop(p, side)
        noisy = photo_eval.noisy_version(crop, sigma255, index=index)
        est = estimate_sigma(noisy if crop.is_colour else noisy[:, :, 0])
        den = photo_eval.run_denoiser(fn, noisy, est)
        row = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in (noisy, den, crop.image)]
        rows.append(np.concatenate([np.pad(a, ((2, 2), (2, 2), (0, 0)), constant_values=1.0) for a in row], axis=1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows])
    buf = io.BytesIO()
    Image.fromarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- export


X_SPEC = TensorSpec(
    "x",
    ("batch", 3, "height", "width"),
    value_range=(0.0, 1.0),
    layout=f"NCHW, 3 channels (RGB; gray as 3 identical channels), any height and width >= {MIN_SIDE}",
    description="noisy pixels in [0, 1] (pixel / 255)",
)
SIGMA_SPEC = TensorSpec(
    "sigma",
    ("batch",),
    value_range=(0.0, 1.0),
    layout="[N], one noise level per image",
    description="noise standard deviation on the pixel scale (sigma / 255 for 8-bit images); trained for 0..55/255",
)
Y_SPEC = TensorSpec(
    "denoised",
    ("batch", 3, "height", "width"),
    value_range=(0.0, 1.0),
    layout="NCHW, same size as x (gray in: average or take any channel)",
    description="denoised pixels in [0, 1]",
)


X_GRAY_SPEC = dataclasses.replace(
    X_SPEC, shape=("batch", 1, "height", "width"), layout=f"NCHW, 1 channel, any height and width >= {MIN_SIDE}"
)
Y_GRAY_SPEC = dataclasses.replace(Y_SPEC, shape=("batch", 1, "height", "width"), layout="NCHW, same size as x")


def export_spec(net: PhotoDenoiser, parity: list[tuple[np.ndarray, ...]]) -> GraphSpec:
    return GraphSpec(
        "full",
        net,
        [X_SPEC, SIGMA_SPEC],
        [Y_SPEC],
        parity,
        description="noisy image + noise level -> denoised image (residual: x minus predicted noise, clipped)",
    )


def gray_export_spec(net: PhotoDenoiser, parity: list[tuple[np.ndarray, ...]]) -> GraphSpec:
    """The gray specialist; `parity`: the colour graph's inputs, of which it takes the first channel."""
    return GraphSpec(
        "gray",
        net,
        [X_GRAY_SPEC, SIGMA_SPEC],
        [Y_GRAY_SPEC],
        [(np.ascontiguousarray(x[:, :1]), sigma) for x, sigma in parity],
        description="noisy gray image + noise level -> denoised gray image: the gray specialist, which the service "
        "runs for gray uploads (the full graph serves colour)",
    )


def parity_inputs(photos: list[Photo]) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(3)
    coffee = next((p for p in photos if p.is_colour), photos[0])
    crop = _center_crop(coffee, 64).image
    crop = np.repeat(crop, 3, axis=2) if crop.shape[2] == 1 else crop
    x1 = photo_eval.noisy_version(Photo("c", crop), 25).transpose(2, 0, 1)[None]
    return [
        (x1, np.array([25 / 255], np.float32)),
        (rng.random((3, 3, 30, 46), dtype=np.float32), np.array([0.0, 0.1, 0.2], np.float32)),
        (rng.random((2, 3, 31, 45), dtype=np.float32), np.array([0.05, 0.15], np.float32)),  # odd sides
        (rng.random((1, 3, 3, 2), dtype=np.float32), np.array([0.1], np.float32)),  # tiny
    ]


# ---------------------------------------------------------------------------------------------------- train()


def train(cfg: Config, data: DataOptions) -> Trained:
    photos = load_train_photos(debian=cfg.debian)
    leaked = {p.name for p in photos} & set(HELD_OUT)
    if leaked:
        raise ValueError(f"held-out photographs in the training set: {sorted(leaked)}")
    same = near_duplicates(photos, load_held_out())
    if same:
        raise ValueError(f"training photographs that are held-out ones under another name: {same}")
    if cfg.quick:
        photos = photos[: cfg.quick_photos]
    state = train_loop(cfg, photos)
    net = state.net
    gray_state = train_loop(gray_config(cfg), photos, start=gray_copy(net)) if cfg.gray_steps > 0 else None
    gray_net = gray_state.net if gray_state is not None else None
    fn = torch_denoiser(net, gray_net)

    held_out = load_held_out()
    eval_photos = [_center_crop(p, cfg.quick_crop) for p in held_out] if cfg.quick else held_out
    methods = ("median3x3", "nl_means", "wavelet", "tv")
    use_bm3d = cfg.bm3d and not cfg.quick and photo_eval.bm3d_available()
    if use_bm3d:
        methods = (*methods, "bm3d")
    tv_photos = [_center_crop(p, 64 if cfg.quick else 256) for p in photos[:2]]
    tv_weights = photo_eval.tune_tv_weights(tv_photos, photo_eval.GATE_SIGMAS, crop=64 if cfg.quick else 256)
    log.info("photo: evaluating on %s (%s)", [p.name for p in eval_photos], ", ".join(methods))
    quality = photo_eval.evaluate(fn, eval_photos, methods=methods, tv_weights=tv_weights, log=log.info)
    tracking = photo_eval.sigma_tracking(eval_photos)
    clean = clean_photos_check(fn, eval_photos)
    mnist = mnist_check(fn, data, cfg.quick)
    onnx_1024 = None if cfg.quick else onnx_seconds_1024(net)
    check = None
    if not cfg.quick and not cfg.debian:  # with debian=true they are training photographs, no check
        check_set = load_photos(DEBIAN_PHOTOS, skip_missing=True, quiet=True)
        log.info("photo: %d check photographs, never trained on (`make photo-data` fetches them)", len(check_set))
        check = check_photos_eval(fn, check_set, use_bm3d) if check_set else None

    gates = []
    for s in photo_eval.GATE_SIGMAS:
        for kind in ("gray", "colour"):
            row = quality["by_sigma"][str(s)][kind]
            gates.append(
                Gate(
                    f"{kind} sigma {s}: blind PSNR >= NL-means (true sigma) + {NLMEANS_MARGIN_DB} dB",
                    row["model_blind"]["psnr_db"],
                    row["nl_means"]["psnr_db"] + NLMEANS_MARGIN_DB,
                    True,
                )
            )
            if use_bm3d:
                gates.append(
                    Gate(
                        f"{kind} sigma {s}: blind PSNR >= BM3D (true sigma)",
                        row["model_blind"]["psnr_db"],
                        row["bm3d"]["psnr_db"],
                        True,
                    )
                )
    gates.append(
        Gate(
            f"clean photo unchanged (blind): min PSNR vs itself >= {CLEAN_TARGET_DB:g} dB",
            min(c["blind_psnr_db"] for c in clean.values()),
            CLEAN_TARGET_DB,
            True,
        )
    )
    for s in photo_eval.GATE_SIGMAS:
        m = mnist[str(s)]
        gates.append(
            Gate(
                f"MNIST digits sigma {s}: blind PSNR >= noisy input",
                m["model_blind_psnr_db"],
                m["noisy_input_psnr_db"],
                True,
            )
        )

    head = quality["by_sigma"]["25"]
    metrics = {
        "headline_sigma": 25,
        "psnr": "per-photo PSNR (peak 1.0, dB) averaged over the held-out photos of a kind; SSIM likewise "
        "(scikit-image structural_similarity, data_range 1)",
        "sigma_scale": "sigma in these metrics is on the 0..255 scale; the graph's sigma input is sigma / 255",
        "held_out": {"gray": list(HELD_OUT_GRAY), "colour": list(HELD_OUT_COLOUR)},
        "primary": "model_blind: sigma from app/core/noise.py's estimator on the noisy image; "
        "model_given_sigma beside it",
        "headline": {kind: {k: v["psnr_db"] for k, v in head[kind].items() if isinstance(v, dict)} for kind in head},
        "by_sigma": quality["by_sigma"],
        "per_photo": quality["per_photo"],
        "method_seconds": quality["seconds"],
        "baselines": {
            "noisy_input": "the noisy image itself",
            "median3x3": "3x3 median per channel, edge replication",
            "nl_means": "skimage denoise_nl_means, true sigma, h = 0.8 sigma, fast mode, patch 5, distance 6",
            "wavelet": "skimage denoise_wavelet, true sigma, BayesShrink soft, YCbCr for colour",
            "tv": f"skimage denoise_tv_chambolle, weight per sigma tuned on training photos: {tv_weights}",
            "bm3d": "bm3d 4.x (bm3d / bm3d_rgb), true sigma"
            if use_bm3d
            else "not run here (non-commercial licence: not a dependency); see bench/photo_quality.py",
        },
        "noise": "Gaussian, added, rounded to 8 bits, clipped to [0, 1]; fixed seeds (training/photo_eval.py)",
        "sigma_estimator": {
            "module": "app/core/noise.py (numpy only; the service uses the same function)",
            "method": "Immerkaer 3x3 mask, MAD scale, clip-aware (local mean), top-20% Sobel edges left out, "
            "8-bit rounding variance removed",
            "tracking_255": tracking,
        },
        "clean_photos": clean,
        "mnist": mnist,
        "check_photos": check,
        "onnxruntime_seconds_1024x1024_colour_2_threads": onnx_1024,
        "quick_eval": "central crops" if cfg.quick else None,
        "training": {
            "steps": state.step,
            "train_minutes_total": state.train_seconds / 60.0,
            "best_val_psnr_db": state.best_val_psnr,
            "best_step": state.best_step,
            "val": "fixed patches of the training photographs at sigma 15/25/50, true sigma",
            "history": state.history[-200:],
            "gray": None
            if gray_state is None
            else {
                "what": "the gray graph: gray_copy of the best joint network, fine-tuned on gray patches only",
                "steps": gray_state.step,
                "train_minutes": gray_state.train_seconds / 60.0,
                "lr": cfg.gray_lr,
                "best_val_psnr_db": gray_state.best_val_psnr,
                "best_step": gray_state.best_step,
                "val": "fixed gray patches of the training photographs at sigma 15/25/50, true sigma",
                "history": gray_state.history[-200:],
            },
        },
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    parity = parity_inputs(held_out)
    fit = FitResult(best_epoch=state.best_step, best_val_loss=-state.best_val_psnr, seconds=state.train_seconds)
    image_section = {
        "channels": 3,
        "gray": "the `gray` graph takes gray images as 1 channel (a specialist, fine-tuned on gray patches: what "
        "the service runs for gray uploads)"
        if gray_net is not None
        else "feed a gray image as 3 identical channels; read back the mean (or any) output channel",
        "colour": "RGB; noise is removed jointly across the channels",
        "sides": f"any height and width >= {MIN_SIDE}; odd sides are reflect-padded by one pixel inside the graph "
        "and cropped back (the network works at half resolution after a 2x2 pixel-unshuffle)",
        "sigma_input": {
            "name": "sigma",
            "shape": ["batch"],
            "scale": "standard deviation on the 0..1 pixel scale: sigma_255 / 255",
            "trained_range_255": [0.0, cfg.sigma_max],
            "when_unknown": "estimate it with app.core.noise.estimate_sigma(image) on the [0, 1] image (HWC or HW)",
            "jitter": f"trained with the sigma input perturbed (x exp(N(0, {cfg.jitter_rel})) + N(0, "
            f"{cfg.jitter_abs}/255)) on {cfg.jitter_fraction:.0%} of patches, to tolerate estimation error",
        },
        "noise_model": "additive white Gaussian, 8-bit rounded and clipped, same sigma in every channel",
        "architecture": f"FFDNet-style input: pixel-unshuffle 2x2 + noise map (13 ch) -> conv3x3 {cfg.channels} ch, "
        f"ReLU -> {cfg.blocks} residual blocks (conv3x3, ReLU, conv3x3, + input) -> ReLU, conv3x3 12 ch -> "
        "pixel-shuffle = noise; output clip(x - noise)",
    }
    return Trained(
        kind=KIND,
        description="Residual convolutional denoiser for natural photographs (gray and colour, any size), blind "
        f"for Gaussian noise sigma 0..{cfg.sigma_max:g} of 255 with app/core/noise.py's estimate, or given sigma",
        tasks=["denoise"],
        graphs=[export_spec(net, parity)] + ([gray_export_spec(gray_net, parity)] if gray_net is not None else []),
        metrics=metrics,
        gates=gates,
        data={
            **provenance(photos),
            "patches": f"{cfg.quick_patch if cfg.quick else cfg.patch} px, 8 flips/rotations, "
            f"{cfg.gray_fraction:.0%} gray; sigma uniform in [0, {cfg.sigma_max:g}]/255, "
            f"{cfg.zero_sigma_fraction:.0%} at 0",
            "train_photo_names": sorted(p.name for p in photos),
        },
        fit=fit,
        preprocessing={
            "client": "RGB or gray pixels / 255 as NCHW float32 with 3 channels (gray: 3 identical channels); "
            "sigma / 255 per image, or app.core.noise.estimate_sigma(image) when unknown",
            "in_graph": "reflect-pad odd H or W by one pixel, crop back; clip the output to [0, 1]",
        },
        sections={
            "input": {
                "layout": "image",
                "range": [0.0, 1.0],
                "image": {"height": None, "width": None, "channels": 3, "min_side": MIN_SIDE},
                "fully_convolutional": True,
                "extra_inputs": {"sigma": "noise standard deviation / 255, shape [batch]"},
            },
            "image": image_section,
        },
        artifacts={"samples.png": samples_png(fn, eval_photos, side=64 if cfg.quick else 160)},
    )
