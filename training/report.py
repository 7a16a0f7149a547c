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
    lines += [
        "",
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
