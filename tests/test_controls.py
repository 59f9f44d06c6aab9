"""Density-matched controls: exact per-layer counts, uniform draws, reproducible per-mask
streams, tables shaped like ``layers``, and Rand/ERK masks that look like their own controls."""
import numpy as np
import pandas as pd
import pytest
import torch

from lib import controls
from lib.models import build_model
from lib.pruning import compute_masks
from lib.settings import KEYS
from lib.spectral import EXTRA, METRICS, model_metrics

KEYS_OF = dict(arch="resnet34", skip=True, width=0.0625, dataset="synthetic", method="ERK", density=0.1, seed=1)


@pytest.mark.parametrize("size_left, size_right, kept", [(6, 5, 12), (50, 20, 9), (50, 20, 993), (4, 3, 0), (4, 3, 12)])
def test_random_layer_mask_keeps_exactly_kept(size_left, size_right, kept):
    rng = np.random.default_rng(0)
    mask = controls.random_layer_mask(size_left, size_right, kept, rng)
    assert mask.dtype == torch.bool and tuple(mask.shape) == (size_right, size_left)
    assert int(mask.sum()) == kept


@pytest.mark.parametrize("size, kept", [(30, 12), (1000, 7), (1000, 996)])  # Bernoulli path, sparse, complement
def test_random_layer_mask_is_uniform_over_positions(size, kept):
    rng = np.random.default_rng(1)
    draws = 4000 if size == 30 else 1500
    freq = np.mean([controls.random_layer_mask(size, 1, kept, rng).numpy().ravel() for _ in range(draws)], 0)
    p = kept / size
    sd = np.sqrt(p * (1 - p) / draws)
    assert np.abs(freq - p).max() < 5 * sd
    if size == 30:  # and pairs are not correlated beyond what a fixed count implies
        pair = np.mean([np.outer(m, m)[0, 1] for m in
                        (controls.random_layer_mask(size, 1, kept, rng).numpy().ravel() for _ in range(draws))])
        assert pair == pytest.approx(kept * (kept - 1) / (size * (size - 1)), abs=5 * np.sqrt(0.16 / draws))


def test_random_layer_mask_rejects_impossible_counts():
    with pytest.raises(ValueError, match="kept must be in"):
        controls.random_layer_mask(3, 3, 10, np.random.default_rng(0))


def test_control_streams_are_per_mask_and_per_draw():
    same = dict(KEYS_OF, density=np.float64(0.1), seed=np.int64(1), skip=np.bool_(True))
    first = np.random.default_rng(controls.control_seed(KEYS_OF, 0)).random(3)
    assert np.array_equal(first, np.random.default_rng(controls.control_seed(same, 0)).random(3))
    for other in (controls.control_seed(KEYS_OF, 1), controls.control_seed(dict(KEYS_OF, method="Rand"), 0),
                  controls.control_seed(KEYS_OF, 0, seed=1)):
        assert not np.array_equal(first, np.random.default_rng(other).random(3))


def test_model_layer_sizes_of_the_full_models():
    resnet = controls.model_layer_sizes("resnet34", "cifar10")
    assert len(resnet) == 37 and resnet["conv1"] == (3 * 7 * 7, 64) and resnet["fc"] == (512, 10)
    vgg = controls.model_layer_sizes("vgg16", "cifar100")
    assert len(vgg) == 16 and vgg["classifier.0"] == (512 * 7 * 7, 4096) and vgg["classifier.6"] == (4096, 100)
    assert len(controls.model_layer_sizes("resnet34", "cifar10", skip=False)) == 34
    with pytest.raises(ValueError, match="num_classes and in_channels"):
        controls.model_layer_sizes("vgg16", "imagenet")


@pytest.fixture(scope="module")
def small_layers():
    """The layers table of two real masks of a 1/16-width ResNet-34."""
    frames = []
    for method in ("ERK", "Rand"):
        keys = dict(KEYS_OF, method=method)
        masks = compute_masks(build_model("resnet34", width=keys["width"], meta=True), method, keys["density"], seed=1)
        table = model_metrics(masks)
        frames.append(pd.concat([pd.DataFrame([keys] * len(table)), table], axis=1))
    return pd.concat(frames, ignore_index=True)


def test_mask_controls_match_counts_and_are_layers_shaped(small_layers):
    one = small_layers[small_layers["method"] == "ERK"]
    counts = controls.layer_counts(one)
    table = controls.mask_controls(KEYS_OF, counts, draws=2)
    assert list(table.columns) == [*KEYS, "layer", *METRICS, *EXTRA, "control", "draw"]
    assert table["control"].all() and sorted(table["draw"].unique()) == [0, 1]
    for draw, g in table.groupby("draw"):
        assert g["edges"].tolist() == one["edges"].tolist()
        assert g["layer_density"].to_numpy() == pytest.approx(one["layer_density"].to_numpy())
    # draws are prefix-stable: a cache can be extended later
    later = controls.mask_controls(KEYS_OF, counts, draws=1, first_draw=1)
    pd.testing.assert_frame_equal(later.reset_index(drop=True),
                                  table[table["draw"] == 1].reset_index(drop=True))


def test_counts_from_densities_and_model_shapes(small_layers):
    """The published record gives only layer densities: counts are rebuilt from the model."""
    only_density = small_layers.drop(columns=["edges", "size_left", "size_right"])
    sizes = controls.model_layer_sizes("resnet34", "synthetic", width=KEYS_OF["width"])
    mask = small_layers["method"] == "ERK"
    assert controls.layer_counts(only_density[mask], sizes) == controls.layer_counts(small_layers[mask])
    with pytest.raises(ValueError, match="pass sizes="):
        controls.layer_counts(only_density[mask])
    full = controls.controls_table(small_layers, draws=1, progress=False)
    rebuilt = controls.controls_table(only_density, draws=1, progress=False)
    pd.testing.assert_frame_equal(full, rebuilt)
    assert set(full["method"]) == {"ERK", "Rand"}
    assert set(controls.controls_table(small_layers, methods=["Rand"], progress=False)["method"]) == {"Rand"}


def _mid_ranks(real: pd.DataFrame, ctrl: pd.DataFrame, metric: str) -> list[float]:
    """Per layer, the real value's mid-rank among its controls' draws (0..1), informative layers only."""
    out = []
    for layer, g in ctrl.groupby("layer", sort=False):
        value = real.loc[real["layer"] == layer, metric].item()
        draws = g[metric].to_numpy()
        if np.isnan(value) or np.isnan(draws).any() or np.ptp(np.append(draws, value)) == 0:
            continue
        out.append((np.sum(draws < value) + 0.5 * np.sum(draws == value)) / len(draws))
    return out


def test_rand_and_erk_agree_with_their_own_controls():
    """Rand and ERK keep a uniformly random set of each layer's count: their metrics must look
    like a draw of their controls. Pooled over layers, the real value's rank among K control
    draws is uniform, mean 1/2 and sd sqrt((K+2) / (12 K) / N); a structured mask with the
    same counts (each layer's weights packed into whole output rows) must fail the same check."""
    width, density, draws = 0.125, 0.1, 5
    ranks = {m: [] for m in ("delta_r_norm", "imdb_norm", "narc")}
    packed_ranks = []
    for method in ("Rand", "ERK"):
        keys = dict(KEYS_OF, method=method, width=width)
        masks = compute_masks(build_model("resnet34", width=width, meta=True), method, density, seed=2)
        masks = {k: v for k, v in masks.items() if not k.startswith("layer4")}  # the costly third
        real = model_metrics(masks)
        counts = controls.layer_counts(real)
        ctrl = controls.mask_controls(keys, counts, draws=draws)
        for metric in ranks:
            ranks[metric] += _mid_ranks(real, ctrl, metric)
        packed = {}
        for name, (left, right, kept) in counts.items():
            flat = torch.zeros(left * right, dtype=torch.bool)
            flat[:kept] = True
            packed[name] = flat.reshape(right, left)
        packed_ranks += _mid_ranks(model_metrics(packed), ctrl, "delta_r_norm")
    for metric, r in ranks.items():
        sd = np.sqrt((draws + 2) / (12 * draws) / len(r))
        assert len(r) >= 30 and abs(np.mean(r) - 0.5) < 4 * sd, metric
    sd = np.sqrt((draws + 2) / (12 * draws) / len(packed_ranks))
    assert abs(np.mean(packed_ranks) - 0.5) > 6 * sd


def test_control_metrics_are_summarize_per_draw(small_layers):
    from lib.claims import control_metrics
    from lib.spectral import summarize

    table = controls.controls_table(small_layers, draws=2, progress=False)
    fast = control_metrics(table)
    assert len(fast) == 4  # 2 masks x 2 draws
    for row in fast.itertuples(index=False):
        g = table[(table["method"] == row.method) & (table["draw"] == row.draw)]
        expected = summarize(g)
        for m in ("delta_r_norm", "imdb_norm", "narc", "undefined_layers", "imdb_undefined_layers", "layers"):
            assert getattr(row, m) == pytest.approx(expected[m], nan_ok=True)
