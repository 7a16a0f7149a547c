"""models/README.md: the table of every model's quality, written from the cards (never by hand)."""

from __future__ import annotations

import json
from pathlib import Path

from app.core.cards import CARD_FILE


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def headline(card: dict) -> tuple[str, str]:
    """(measure, result beside its baseline) for a card."""
    m = card["metrics"]
    if card["kind"] == "photo-denoise":
        s = m["by_sigma"][str(m["headline_sigma"])]

        def kind(k: str) -> str:
            r = s[k]
            bm3d = f", BM3D {_fmt(r['bm3d']['psnr_db'])}" if "bm3d" in r else ""
            return (
                f"{k} **{_fmt(r['model_blind']['psnr_db'])}** (given σ {_fmt(r['model_given_sigma']['psnr_db'])}) "
                f"vs NL-means {_fmt(r['nl_means']['psnr_db'])}{bm3d}, noisy {_fmt(r['noisy_input']['psnr_db'])}"
            )

        def gate(sigma: str) -> str:  # the gate at each sigma: the model, blind, minus BM3D (true sigma)
            cells = []
            for k in ("gray", "colour"):
                r = m["by_sigma"][sigma].get(k)
                if r and "bm3d" in r:
                    cells.append(f"{k} {r['model_blind']['psnr_db'] - r['bm3d']['psnr_db']:+.2f}")
            return f"σ={sigma}: " + ", ".join(cells) if cells else ""

        gates = "; ".join(g for g in (gate(sigma) for sigma in m["by_sigma"]) if g)
        return (
            f"PSNR dB at σ={m['headline_sigma']}/255, blind (held-out photos)",
            "; ".join(kind(k) for k in ("gray", "colour") if k in s)
            + (f" (gate, model − BM3D dB: {gates})" if gates else ""),
        )
    if card["kind"] == "denoise":
        s = m["psnr_by_sigma"][f"{m['headline_sigma']:g}"]
        by = ", ".join(f"σ={k}: {_fmt(v['model_psnr_db'])}" for k, v in m["psnr_by_sigma"].items())
        return (
            f"PSNR dB at σ={m['headline_sigma']:g} (test)",
            f"**{_fmt(s['model_psnr_db'])}** vs 3×3 median {_fmt(s['median3x3_psnr_db'])}, tuned blur "
            f"{_fmt(s['gaussian_blur_psnr_db'])}, noisy input {_fmt(s['noisy_input_psnr_db'])} ({by})",
        )
    if card["kind"] == "lstm-forecast":
        return (
            "next-step MSE (standardised, test)",
            f"**{_fmt(m['test_mse_standardized'])}** vs persistence "
            f"{_fmt(m['baselines']['persistence_mse_standardized'])}",
        )
    if "roc_auc" in m:
        return (
            "ROC AUC (held-out series)",
            f"**{_fmt(m['roc_auc'])}**; precision {_fmt(m['precision_at_threshold'])}, recall "
            f"{_fmt(m['recall_at_threshold'])} at the card's threshold",
        )
    key = "test_mse_per_pixel" if "test_mse_per_pixel" in m else "test_mse_standardized"
    (base_name, base), *_ = m["baselines"].items()
    unit = "per pixel" if key == "test_mse_per_pixel" else "standardised"
    return (
        f"test MSE ({unit})",
        f"**{_fmt(m[key])}** vs {base_name} {_fmt(base)} (ratio {_fmt(m['ratio_to_pca'])})",
    )


def _pair_measure(card: dict) -> tuple[str, float, str]:
    """(measure, value, baseline text) on which a seed design and ours are compared."""
    m = card["metrics"]
    if card["kind"] == "denoise":
        head = m["psnr_by_sigma"][f"{m['headline_sigma']:g}"]
        return (
            f"PSNR dB at σ={m['headline_sigma']:g} (higher is better)",
            head["model_psnr_db"],
            f"3×3 median {_fmt(head['median3x3_psnr_db'])}, noisy {_fmt(head['noisy_input_psnr_db'])}",
        )
    if card["kind"] == "lstm-forecast":
        return (
            "next-step MSE, standardised",
            m["test_mse_standardized"],
            f"persistence {_fmt(m['baselines']['persistence_mse_standardized'])}",
        )
    key = "test_mse_per_pixel" if "test_mse_per_pixel" in m else "test_mse_standardized"
    base = ", ".join(f"{name.replace('_', ' ')} {_fmt(v)}" for name, v in m["baselines"].items())
    return ("test MSE " + ("per pixel" if key == "test_mse_per_pixel" else "standardised"), m[key], base)


def seed_pairs(cards: list[dict]) -> list[str]:
    """The seed documents' designs beside ours: one row per pair, one paragraph per pair, from the cards."""
    by_name = {c["name"]: c for c in cards}
    pairs = [(c, by_name.get(c["metrics"]["seed"]["ours"])) for c in cards if "seed" in c["metrics"]]
    if not pairs:
        return []
    lines = [
        "## The seed documents' designs beside ours",
        "",
        "Each `*-seed` model is a design of `../shared/seeds/` as written (its card and module say where the seed "
        "leaves a choice open and what was taken); the same data, split and test set as ours.",
        "",
        "| seed design | ours | measure | seed | ours | baselines (seed's; ours) |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for seed, ours in pairs:
        measure, seed_value, seed_base = _pair_measure(seed)
        if ours is None:
            lines.append(f"| `{seed['name']}` | — | {measure} | {_fmt(seed_value)} | — | {seed_base} |")
            continue
        _, ours_value, ours_base = _pair_measure(ours)
        lines.append(
            f"| `{seed['name']}` | `{ours['name']}` | {measure} | {_fmt(seed_value)} | **{_fmt(ours_value)}** | "
            f"{seed_base}; {ours_base} |"
        )
        higher = measure.startswith("PSNR")
        better = ours_value > seed_value if higher else ours_value < seed_value
        change = (
            f"{ours_value - seed_value:+.2f} dB"
            if higher
            else f"× {ours_value / seed_value:.2f}"
            if seed_value
            else "n/a"
        )
        notes.append(
            f"- **`{ours['name']}` vs `{seed['name']}`** ({seed['metrics']['seed']['source']}). Seed: "
            f"{seed['description']}. Ours: {ours['description']}. {measure}: {_fmt(seed_value)} → "
            f"{_fmt(ours_value)} ({change}; ours {'better' if better else 'not better'})."
        )
    ablation = [c for c, _ in pairs if "ablation_single_conv2d" in c["metrics"]]
    for card in ablation:
        a = card["metrics"]["ablation_single_conv2d"]
        rows = ", ".join(
            f"σ={sigma}: {_fmt(r['single_conv2d_psnr_db'])} dB vs noisy {_fmt(r['noisy_input_psnr_db'])} "
            f"({r['gain_over_noisy_db']:+.2f})"
            for sigma, r in a["by_sigma"].items()
        )
        model = card["metrics"]["psnr_by_sigma"]
        full = ", ".join(f"σ={sigma}: {_fmt(r['model_psnr_db'])}" for sigma, r in model.items())
        notes.append(
            f"- **The seed's ablation** (`{card['name']}` card, `ablation_single_conv2d`): {a['claim']}. Measured, "
            f"a single Conv2D (1 filter 3×3 + sigmoid) trained the same way: {rows}; the full `{card['name']}`: "
            f"{full}."
        )
    return [*lines, "", *notes, ""]


def write_models_readme(models_dir: Path) -> Path:
    cards = [json.loads(p.read_text()) for p in sorted(models_dir.glob(f"*/{CARD_FILE}"))]
    lines = [
        "# Models",
        "",
        "Written by `python -m training.report` from the model cards; every number is measured on the held-out "
        "test split. Reproduce any model with `python -m training NAME` (all of them: `make train`).",
        "",
        "| model | tasks | measure | result | gates | train time |",
        "|---|---|---|---|---|---|",
    ]
    for card in cards:
        measure, result = headline(card)
        gates = card["metrics"]["gates"]
        gate_text = "; ".join(f"{g['name']}: {'✅' if g['passed'] else '❌'}" for g in gates) or "—"
        lines.append(
            f"| `{card['name']}` | {', '.join(card['tasks'])} | {measure} | {result} | {gate_text} | "
            f"{card['training']['seconds']:.0f} s |"
        )
    lines += ["", *seed_pairs(cards)]
    lines += [
        "Each folder holds the exported ONNX graphs (`encoder.onnx`, `decoder.onnx`, `full.onnx` where the split "
        "makes sense) and `card.json`: tensor specs, value ranges, sha256 of every file, the ONNX Runtime vs "
        "PyTorch parity figure, training config, data provenance, metrics and the anomaly threshold.",
        "",
    ]
    if any(c["name"] == "denoise" for c in cards):
        lines += ["`denoise/samples.png`: noisy / denoised / clean test digits at σ = 0.5.", ""]
    if any(c["name"] == "photo" for c in cards):
        lines += [
            "`photo/samples.png`: noisy / denoised (blind) / clean crops of the held-out photos at σ = 25/255. "
            "`photo` is trained on its own (`make train-photo`), not by `make train`.",
            "",
        ]
    path = models_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    import sys

    print(write_models_readme(Path(sys.argv[1] if len(sys.argv) > 1 else "models")))
