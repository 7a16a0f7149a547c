"""`--pca-if-better` for every kind: whether PCA is exported instead of the network, and how the card and the
summary say which was exported and why. The validation split decides, so the test numbers stay honest."""

from __future__ import annotations

RULE_PCA = "--pca-if-better: PCA when its validation MSE is not above the autoencoder's"
RULE_NETWORK = "the autoencoder (without --pca-if-better)"


def pca_wins(pca_if_better: bool, pca_val_mse: float, network_val_mse: float) -> bool:
    """Export PCA: asked for, and not worse than the network on the validation split."""
    return pca_if_better and pca_val_mse <= network_val_mse


def choice_metrics(pca_if_better: bool, use_pca: bool) -> dict[str, str]:
    """The card's `metrics.exported` ("pca" or "autoencoder") and `metrics.exported_rule`."""
    return {
        "exported": "pca" if use_pca else "autoencoder",
        "exported_rule": RULE_PCA if pca_if_better else RULE_NETWORK,
    }


def export_line(pca_if_better: bool, use_pca: bool, pca_name: str, network_beats_test: bool) -> str | None:
    """The summary line saying what was exported and why (None: the network, and nothing to point out)."""
    if pca_if_better:
        if use_pca:
            return f"exported: {pca_name} (--pca-if-better: not worse on the validation split)"
        return "exported: the autoencoder (--pca-if-better: it is better on the validation split, which decides)"
    if not network_beats_test:
        return f"exported: the autoencoder anyway; pass --pca-if-better to export {pca_name} instead"
    return None
