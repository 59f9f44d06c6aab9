"""The workbook: units skip what is done, tables are tidy and keyed, figures and claims hold
sane values, and the smoke profile runs end to end through papermill."""
import math
import os

import numpy as np
import pandas as pd
import pytest

from lib import claims, cli, plots, store, workbook
from lib.files import DATA
from lib.pruning import METHODS
from lib.settings import Grid

TINY = dict(
    profile="tiny", archs=["resnet34"], no_skip=True, dataset="synthetic", methods=["Rand", "SNIP", "ERK"],
    densities=[0.1, 0.4], seeds=[1], metric_width=0.0625, train_width=0.0625, scoring_batches=1,
    scoring_batch_size=16, rounds=2, epochs=1, milestones=[1, 1], batch_size=32, train_fraction=1.0,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    grid = Grid(**TINY, runs_dir=str(root), figures_dir=str(root / "figures"))
    for density in grid.densities:
        workbook.prune_density(grid, density, progress=False)
        workbook.train_density(grid, density, progress=False)
        workbook.metrics_density(grid, density, progress=False)
    return grid


def test_grid_validates_its_values():
    with pytest.raises(ValueError, match="unknown pruning method 'Random'"):
        Grid(methods=["Random"])
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        Grid(densities=[0.0])
    with pytest.raises(ValueError, match="unknown architecture"):
        Grid(archs=["resnet50"])
    with pytest.raises(ValueError, match="unknown profile 'fast'; choose one of .*quick"):
        Grid.from_profile("fast")


def test_variants_add_resnet_without_skips():
    assert Grid(archs=["resnet34", "vgg16"]).variants() == [
        ("resnet34", True), ("vgg16", True), ("resnet34", False)]
    assert Grid(archs=["vgg16"]).variants() == [("vgg16", True)]


def test_units_are_done_once(tiny):
    density = tiny.densities[0]
    folders = [store.mask_dir(tiny.root, s) for s in tiny.metric_masks(density)]
    results = [store.train_dir(tiny.root, r) / "result.json" for r in tiny.train_runs(density)]
    before = {p: p.stat().st_mtime_ns for p in [f / "masks.pt" for f in folders] + results}
    masks = workbook.prune_density(tiny, density, progress=False)
    runs = workbook.train_density(tiny, density, progress=False)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten
    assert len(masks) == len(runs) == 2 * 3  # (resnet34, no-skip) x 3 methods x 1 seed
    assert set(runs["status"]) == {"done"}


def test_density_free_scores_are_cached_once_per_seed(tiny):
    cached = sorted(p.name for p in (tiny.root / "scores").glob("*.pt"))
    # SNIP for both variants, at one width; Rand is redrawn from its seed, ERK has no score
    assert len(cached) == 2 and all("SNIP" in name and "-d" not in name.split("SNIP")[1] for name in cached)


def test_collect_gives_keyed_tidy_tables(tiny):
    tables = workbook.collect(tiny)
    assert tables["missing"].empty
    layers, results = tables["layers"], tables["results"]
    keys = ["arch", "skip", "dataset", "method", "density", "seed"]
    assert not results.duplicated(keys).any() and len(results) == 2 * 3 * 2
    assert results["test_acc"].between(0, 1).all()
    # ResNet-34: 33 convolutions + fc, and 3 downsample convolutions when it has skips
    assert (results["layers"] == np.where(results["skip"], 37, 34)).all()
    assert set(layers.groupby(keys).size()) == {37, 34}
    assert set(layers["layer"][:3]) == {"conv1", "layer1.0.conv1", "layer1.0.conv2"}
    # the joined table agrees with the per-layer means it was built from
    one = results.iloc[0]
    sel = (layers["method"] == one["method"]) & (layers["density"] == one["density"]) & (layers["skip"] == one["skip"])
    assert one["imdb_norm"] == pytest.approx(layers.loc[sel, "imdb_norm"].mean())


def test_collect_ignores_units_of_other_settings(tiny):
    other = Grid(**{**TINY, "epochs": 2}, runs_dir=tiny.runs_dir)
    tables = workbook.collect(other)
    assert tables["runs"].empty and len(tables["missing"]) == 12  # same masks, new training runs
    assert len(tables["masks"]) == 12


def test_figures_and_claims_from_the_tables(tiny, tmp_path):
    tables = workbook.collect(tiny)
    written = plots.draw_all(tables["results"], tmp_path)
    assert [p.name for p in written] == ["fig1_synthetic.png", "fig2_synthetic.png", "fig3_synthetic.png"]
    assert all(p.stat().st_size > 20_000 and p.with_suffix(".svg").exists() for p in written)
    table = claims.claims_table(tables["results"], tables["layers"])
    taus = table[table["statistic"].str.startswith("tau")]["value"].dropna()
    shares = table[table["statistic"].str.startswith("share")]["value"].dropna()
    assert taus.between(-1, 1).all() and shares.between(0, 1).all()
    assert set(table["claim"].str[:1]) == {"1", "2", "3", "4"}


def test_plots_for_the_notebooks(tiny):
    density = tiny.densities[0]
    for fig in (plots.layer_densities(workbook.layer_density_table(tiny, density)),
                plots.learning_curves(workbook.histories(tiny, density)),
                plots.layer_metrics(workbook.metrics_density(tiny, density, progress=False))):
        assert len(fig.axes) >= 2
        plots.plt.close(fig)
    with pytest.raises(ValueError, match="Figures 1-5"):
        plots.paper_figure(pd.DataFrame(), 6, "x")


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
                    and not (DATA / "FashionMNIST").exists(), reason="Fashion-MNIST files absent")
def test_smoke_profile_end_to_end():
    # Runs into the smoke profile's own scratch folder (runs/smoke), emptied first so that
    # nothing stale is tested; nbval, collected after tests/, then finds these units done
    # and only re-draws, instead of training the same smoke grid a second time.
    import shutil

    grid = Grid.from_profile("smoke")
    runs = grid.root
    shutil.rmtree(runs, ignore_errors=True)
    assert cli.main(["run", "--profile", "smoke"]) == 0
    figures = runs / "figures"
    for n in (1, 2, 3):
        png = figures / f"fig{n}_fashion-mnist.png"
        assert png.stat().st_size > 30_000 and png.with_suffix(".svg").exists()
    results = pd.read_csv(runs / "tables" / "results.csv")
    assert len(results) == 3 * 5 * 2  # 3 models x 5 methods x 2 densities, one seed
    assert results["test_acc"].between(0, 1).all() and results["status"].eq("done").all()
    assert results["delta_r_norm"].notna().any() and results["imdb_norm"].notna().any()
    assert np.isfinite(results["narc"].dropna()).all()
    table = pd.read_csv(figures / "claims.csv")
    assert set(table["claim"].str[:1]) == {"1", "2", "3", "4"}
    assert table.loc[table["statistic"].str.startswith("tau"), "value"].dropna().between(-1, 1).all()
    for nb in ("01_pruning", "02_training", "03_spectral"):
        assert (runs / "notebooks" / "d0.1" / f"{nb}.ipynb").exists()
    assert not math.isnan(results["test_acc"].mean())
    assert set(results["method"]) <= set(METHODS)


@pytest.mark.filterwarnings("ignore::lib.pruning.LayerCollapseWarning")
def test_a_method_added_to_the_registry_runs_through_grid_units_and_plots(tmp_path, monkeypatch):
    """Adding a method is one registry entry: the grid accepts it, the units give it real
    weights and the options it declares, and the figures order it by the registry."""
    import torch

    from lib import pruning

    seen = {}

    def magnitude(model, *, rounds, **_):
        seen["rounds"], seen["on_meta"] = rounds, any(p.is_meta for p in model.parameters())
        return {n: m.weight.detach().abs() for n, m in pruning.prunable_layers(model).items()}

    entry = pruning.Method("Magnitude", scorer=magnitude, needs_weights=True, options=frozenset({"rounds"}))
    monkeypatch.setitem(pruning.METHODS, "Magnitude", entry)
    grid = Grid(**{**TINY, "methods": ["Magnitude"], "no_skip": False, "rounds": 3},
                runs_dir=str(tmp_path), figures_dir=str(tmp_path / "figures"))
    (s,) = grid.metric_masks(0.1)
    masks = pruning.load_masks(workbook.ensure_mask(grid, s) / store.MASKS)
    assert seen == {"rounds": 3, "on_meta": False}
    model = workbook.build(s)
    weights = torch.cat([m.weight.detach().abs().flatten() for m in pruning.prunable_layers(model).values()])
    kept = torch.cat([masks[n].flatten() for n in masks])
    assert weights[kept].min() >= weights[~kept].max()  # the largest weights, globally
    assert list(plots.palette(["Magnitude", "SNIP", "Rand"])) == ["Rand", "SNIP", "Magnitude"]


def test_saved_figures_are_byte_identical_when_the_data_are(tiny, tmp_path):
    results = workbook.collect(tiny)["results"]
    first = plots.draw_all(results, tmp_path / "a")
    second = plots.draw_all(results, tmp_path / "b")
    for a, b in zip(first, second):
        for ext in (".png", ".svg"):
            assert a.with_suffix(ext).read_bytes() == b.with_suffix(ext).read_bytes(), a.name + ext
