"""The seed documents' designs (issue 18): layers as written, the seed's preprocessing, the comparison table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from training import registry
from training.models import (
    conv_dense_latent_seed,
    conv_seed,
    dense_seed,
    lstm_forecast_seed,
    lstm_seed,
    noise_cancel_seed,
)
from training.models.mnist_ae import PerImageStandardize, StandardizedReconstruct
from training.report import seed_pairs

SEEDS = ("dense-seed", "conv-dense-latent-seed", "conv-seed", "noise-cancel-seed", "lstm-seed", "lstm-forecast-seed")


def test_every_seed_design_is_registered_and_trained_by_all():
    assert set(SEEDS) <= set(registry.MODELS) and set(SEEDS) <= set(registry.ALL)
    for name in SEEDS:
        module = registry.get(name)
        assert name == module.NAME and "seed" in module.SEED


def test_per_image_standardisation_is_scikit_learns_on_the_transpose():
    rng = np.random.default_rng(0)
    x = rng.random((5, 784)).astype(np.float32)
    x[3] = 0.25  # a constant image: centred only, as StandardScaler does
    want = StandardScaler().fit_transform(x.T).T
    got = PerImageStandardize()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_dense_seed_is_784_256_k_256_784_relu_code_linear_output_and_maps_back_to_pixels():
    cfg = dense_seed.Config()
    assert (cfg.lr, cfg.optimizer, cfg.train_images, cfg.augment_fraction) == (0.01, "adam", 3000, 0.0)
    net = dense_seed.DenseSeedAE(cfg.latent, cfg.hidden)
    assert [type(m).__name__ for m in net.encoder] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert [type(m).__name__ for m in net.decoder] == ["Linear", "ReLU", "Linear"]  # linear output
    assert [m.out_features for m in (*net.encoder, *net.decoder) if isinstance(m, torch.nn.Linear)] == [
        256, cfg.latent, 256, 784,
    ]  # fmt: skip
    x = torch.rand(4, 784)
    r, score = StandardizedReconstruct(net.encoder, net.decoder)(x)
    mean, std = x.mean(1, keepdim=True), x.std(1, unbiased=False, keepdim=True)
    decoded = net.decoder(net.encoder((x - mean) / std))  # what the decoder graph returns: standardised units
    torch.testing.assert_close(r, decoded * std + mean)
    torch.testing.assert_close(score, (r - x).pow(2).mean(1))


def test_seed_000_cnn_shapes_as_written():
    net = conv_dense_latent_seed.ConvDenseLatentSeedAE()
    x = torch.rand(2, 1, 28, 28)
    pooled = net.encoder[:3](x)
    assert pooled.shape == (2, 10, 24, 24)  # 5x5 max-pool, stride 1, valid
    z = net.encoder(x)
    assert z.shape == (2, 1, 14, 14)
    assert net.decoder[:2](z).shape == (2, 10, 28, 28) and net.decoder(z).shape == (2, 1, 28, 28)
    assert net.decoder[-1].kernel_size == (4, 4) and not isinstance(net.decoder[-1], torch.nn.Sigmoid)


def test_seed_003_pyramid_shapes_as_written():
    net = conv_seed.ConvSeedAE()
    x = torch.rand(2, 1, 28, 28)
    sizes = [h.shape[-1] for h in (net.encoder[:3](x), net.encoder[:6](x), net.encoder(x))]
    assert sizes == [14, 7, 4] and net.encoder(x).shape == (2, 8, 4, 4)
    convs = [m.out_channels for m in net.decoder if isinstance(m, torch.nn.Conv2d)]
    assert convs == [8, 8, 16, 1] and isinstance(net.decoder[-1], torch.nn.Sigmoid)
    assert [m.side for m in net.decoder if isinstance(m, conv_seed.Resize)] == [7, 14, 28]


def test_noise_cancel_seed_keeps_any_size_and_the_ablation_is_one_conv():
    net = noise_cancel_seed.NoiseCancelSeedAE()
    for h, w in ((28, 28), (31, 17), (1, 1)):
        assert net(torch.rand(1, 1, h, w)).shape == (1, 1, h, w)
    ablation = noise_cancel_seed.single_conv2d()
    assert [type(m).__name__ for m in ablation] == ["Conv2d", "Sigmoid"] and ablation[0].out_channels == 1


def test_lstm_seeds_as_written():
    ae = lstm_seed.SeedSequenceAE(np.zeros(6), np.ones(6), hidden=32, latent=3)
    assert isinstance(ae.encoder, lstm_seed.SeedEncoder) and isinstance(ae.decoder, lstm_seed.SeedDecoder)
    lstms = [m for m in ae.modules() if isinstance(m, torch.nn.LSTM) and m is not None]
    assert all(m.bidirectional for m in lstms)
    x = torch.rand(2, 9, 6)
    assert ae.encoder(x).shape == (2, 9, 3) and ae(x)[0].shape == (2, 9, 6)
    cfg = lstm_forecast_seed.Config()
    assert (cfg.dropout, cfg.dropout_after_dense, cfg.predict_change) == (0.1, 0.1, False)
    from training.models.lstm_forecast import Forecaster

    f = Forecaster(np.zeros(6), np.ones(6), 8, 64, cfg.dropout, cfg.dropout_after_dense, cfg.predict_change)
    assert [type(m).__name__ for m in f.head] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]


def _card(name: str, kind: str, metrics: dict) -> dict:
    return {"name": name, "kind": kind, "description": f"{name} design", "metrics": metrics}


def test_the_comparison_table_pairs_each_seed_with_ours_from_the_cards():
    seed = {"source": "seed 000", "ours": "dense"}
    cards = [
        _card("dense", "dense", {"test_mse_per_pixel": 0.0064, "baselines": {"pca_32_mse_per_pixel": 0.017}}),
        _card(
            "dense-seed",
            "dense",
            {"test_mse_per_pixel": 0.032, "baselines": {"pca_32_mse_per_pixel": 0.017}, "seed": seed},
        ),
    ]
    text = "\n".join(seed_pairs(cards))
    assert "| `dense-seed` | `dense` | test MSE per pixel | 0.032 | **0.0064** |" in text
    assert "0.032 → 0.0064 (× 0.20; ours better)" in text
    assert seed_pairs(cards[:1]) == []


@pytest.mark.parametrize("module", [dense_seed, conv_dense_latent_seed, conv_seed, noise_cancel_seed])
def test_seed_configs_use_keras_adam_at_the_seeds_rates(module):
    cfg = module.Config()
    assert cfg.optimizer == "adam" and cfg.augment_fraction == 0.0
    assert cfg.lr == {"dense-seed": 0.01, "conv-dense-latent-seed": 0.005}.get(module.NAME, 1e-3)
