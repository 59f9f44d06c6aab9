"""lib.reproduction: the workbook's own masks against the published record, with verdicts that
can fail (a prediction interval over the authors' seeds), and cells that need data listed."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib import published, reproduction
from lib.settings import KEYS, Grid


def test_within_means_the_prediction_interval_of_one_more_seed():
    # 3 seeds against one: t(0.975, 2) * sqrt(1 + 1/3) = 4.97 standard deviations
    assert reproduction.half_width(1.0, 3) == pytest.approx(stats.t.ppf(0.975, 2) * math.sqrt(4 / 3))
    assert reproduction.half_width(1.0, 3, m=3) == pytest.approx(stats.t.ppf(0.975, 2) * math.sqrt(2 / 3))
    assert reproduction._verdict(4.9, 0.0, 1.0, 3) == "within"
    assert reproduction._verdict(5.0, 0.0, 1.0, 3) == "outside"
    assert reproduction._verdict(1.0, 1.0 + 1e-9, 0.0, 3) == "within"  # seeds that agree exactly
    assert reproduction._verdict(1.0, 1.001, 0.0, 3) == "outside"
    assert reproduction._verdict(np.nan, 0.3, 0.1, 3) == "defined in one only"
    # a 5% rate leaves up to 4 of 37 layers outside by chance (binomial 95% quantile)
    assert reproduction.allowed_outside(37) == stats.binom.ppf(0.95, 37, 0.05) == 4


def _record(values: dict[int, float], layer_densities: dict[int, list[float]]) -> dict[str, pd.DataFrame]:
    """A one-cell record: ResNet-34 Rand at 0.1 on CIFAR-10, three seeds."""
    base = dict(arch="resnet34", skip=True, width=1.0, dataset="cifar10", method="Rand", density=0.1)
    masks = pd.DataFrame([{**base, "seed": s, "delta_r_norm": v, "imdb_norm": v, "narc": -v, "mu_hat": 10 + v}
                          for s, v in values.items()])
    layers = pd.DataFrame([{**base, "seed": s, "layer": f"l{i}", "layer_density": d}
                           for s, ds in layer_densities.items() for i, d in enumerate(ds)])
    results = masks[KEYS].assign(status="done", test_acc=[0.80, 0.81, 0.82], anomaly="")
    return {"masks": masks, "layers": layers, "results": results}


def test_compare_gives_each_quantity_a_verdict_and_lists_what_needs_data():
    record = _record({1: 0.10, 2: 0.11, 3: 0.12}, {1: [0.1, 0.2], 2: [0.11, 0.2], 3: [0.09, 0.2]})
    reference = Grid(dataset="cifar10", archs=["resnet34"], methods=["Rand"], densities=[0.1], no_skip=False)
    cell = dict(arch="resnet34", skip=True, width=1.0, dataset="cifar10", method="Rand", density=0.1, seed=1)
    own = {"masks": pd.DataFrame([{**cell, "delta_r_norm": 0.115, "imdb_norm": 0.5, "narc": -0.11,
                                   "mu_hat": 10.11}]),
           "layers": pd.DataFrame([{**cell, "layer": "l0", "layer_density": 0.1},
                                   {**cell, "layer": "l1", "layer_density": 0.2}])}
    table = reproduction.compare(reference, own, record).set_index("quantity")
    assert table.loc["delta_r_norm", "verdict"] == "within"
    assert table.loc["imdb_norm", "verdict"] == "outside"  # 0.5 against 0.11 ± 0.01
    assert table.loc["layer_density", "verdict"] == "within" and "0 of 2 layers outside" in table.loc["layer_density", "detail"]
    assert table.loc["test_acc", "verdict"] == "needs CIFAR-10"  # the workbook trained no CIFAR-10 here
    assert table.loc["narc", "published_mean"] == pytest.approx(-0.11)
    assert table.loc["narc", "published_sd"] == pytest.approx(0.01)
    # without own masks every quantity says what it needs
    empty = {"masks": pd.DataFrame(), "layers": pd.DataFrame()}
    assert set(reproduction.compare(reference, empty, record)["verdict"]) == {"needs CIFAR-10"}
    # own runs of the same cell are compared too
    runs = pd.DataFrame([{**cell, "status": "done", "test_acc": 0.9}])
    acc = reproduction.compare(reference, own, record, runs).set_index("quantity").loc["test_acc"]
    assert (acc["own"], acc["verdict"]) == (0.9, "outside")


def test_reference_grid_keeps_data_methods_only_where_the_data_are(tmp_path):
    record = published.tables()
    grid = Grid(reference_densities=[0.1, 0.4, 0.3], data_dir=str(tmp_path), runs_dir=str(tmp_path / "runs"))
    reference = reproduction.reference_grid(grid, record, "cifar10")
    assert reference.methods == ("Rand", "ERK", "SynFlow")  # no CIFAR-10 in tmp_path
    assert reference.densities == (0.1, 0.4) and reference.metric_width == 1.0 and not reference.no_skip
    assert reference.control_draws == 0
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert "SNIP" in reproduction.reference_grid(grid, record, "cifar10").methods


@pytest.mark.filterwarnings("ignore::lib.pruning.LayerCollapseWarning")
def test_own_full_size_rand_and_erk_masks_reproduce_the_published_layer_densities(tmp_path):
    record = published.tables()
    grid = Grid(archs=["resnet34"], methods=["Rand", "ERK"], reference_densities=[0.4], rounds=2,
                runs_dir=str(tmp_path), data_dir=str(tmp_path))
    reference = reproduction.reference_grid(grid, record, "cifar10")
    reference = reference.__class__(**{**reference.values(), "methods": ("Rand", "ERK")})
    own = reproduction.ensure_masks(reference, progress=False)
    table = reproduction.compare(reference, own, record)
    densities = table[table["quantity"] == "layer_density"].set_index("method")["verdict"]
    assert (densities[["Rand", "ERK"]] == "within").all(), table[["method", "detail"]]
    assert densities["SNIP"] == "needs CIFAR-10" and densities["SynFlow"] == "not in this grid's methods"
    assert (own["layers"].groupby("method")["layer"].count() == 37).all()


def test_an_empty_reference_compares_nothing_and_says_so(tmp_path):
    # reference_densities=[] is how a grid opts out of 05's full-size masks
    grid = Grid(reference_densities=[], runs_dir=str(tmp_path), data_dir=str(tmp_path))
    report = reproduction.reproduce(grid, published.tables(), progress=False)
    assert report["cells"].empty and report["layers"].empty and "quantity" in report["cells"].columns
    assert reproduction.tally(report["cells"]).empty
    assert reproduction.summary(report["cells"]).startswith("No cell compared")
    assert not any(tmp_path.iterdir())  # nothing drawn
