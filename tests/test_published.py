"""The published record: it reproduces the authors' summary table, its tables are keyed like the
workbook's, the release's anomalies are flagged (exactly those), and the converter is
deterministic and rejects what is not the release."""
import gzip
import hashlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import published
from lib.settings import KEYS

RELEASE = Path("/work/shared/ramanujan-on-pai-release")
DENSITIES = (0.01, 0.05, 0.1, 0.2, 0.4)
CELL = ["model_type", "prune_type", "global_density"]


@pytest.fixture(scope="module")
def record():
    return published.read_record()


@pytest.fixture(scope="module")
def tables():
    return published.tables()


# ------------------------------------------------------------------------------ the authors' table
def test_record_reproduces_the_authors_main_table(record, tables):
    """Every cell of summarized_results_main.csv, recomputed from the per-run record: accuracy
    (mean, sample std over seeds) and each metric's pooled mean, within-seed std and defined
    fraction, to 1e-6, NaN where the authors have NaN."""
    mine = published.authors_summary(tables["layers"], tables["runs"], "cifar10")
    main = record["main"]
    assert len(main) == 60 and set(map(tuple, mine[CELL].to_numpy())) == set(map(tuple, main[CELL].to_numpy()))
    both = main.merge(mine, on=CELL, suffixes=("", "_record"))
    columns = [c for c in mine.columns if c not in CELL]
    assert len(columns) == 2 + 3 * len(published.METRIC_NAMES)
    for c in columns:
        np.testing.assert_allclose(both[c + "_record"], both[c], rtol=0, atol=1e-6, equal_nan=True, err_msg=c)
    # The NaN convention matters: VGG-16 GraSP at 0.05 has delta_r on 2 layers of 48, all in
    # seeds 2 and 3, and the authors' mean is NaN there (a pooled mean would be 2.23).
    cell = both[(both["model_type"] == "vgg16") & (both["prune_type"] == "GraSP") & (both["global_density"] == 0.05)]
    assert np.isnan(cell["rm_mean"].item()) and cell["rm_count"].item() == pytest.approx(2 / 48)


def test_main_table_describes_cifar10(record, tables):
    runs = tables["runs"]
    assert published.summary_dataset(record["main"], runs) == "cifar10"
    assert published.summary_dataset(record["main"], runs[runs["dataset"] == "cifar100"]) is None


def test_record_files_are_the_release(record):
    """The summary tables are verbatim copies (sha256 of sources.csv); where the release is on
    this machine, every file it lists is unchanged there."""
    sources = record["sources"].set_index("path")
    assert len(sources) == 57 + 57 + 2  # graph_seed and summary files, the two summary tables
    for name, file in published.SUMMARIES.items():
        raw = gzip.decompress((published.FOLDER / published.FILES[name]).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == sources.loc[file, "sha256"]
    if RELEASE.is_dir():
        for path, row in sources.iterrows():
            assert hashlib.sha256((RELEASE / path).read_bytes()).hexdigest() == row["sha256"], path


# ------------------------------------------------------------------------------ tables
def test_tables_are_keyed_like_the_workbooks(tables):
    unique = {"layers": KEYS + ["layer"], "masks": KEYS, "runs": KEYS, "histories": KEYS + ["epoch"],
              "results": ["arch", "skip", "dataset", "method", "density", "seed"]}
    for name, keys in unique.items():
        df = tables[name]
        assert not df.duplicated(keys).any(), name
        assert set(df["arch"]) == {"resnet34", "vgg16"} and set(df["dataset"]) == {"cifar10", "cifar100"}
        assert set(df["method"]) == {"Rand", "ERK", "SNIP", "GraSP", "SynFlow", "iterSNIP"}
        assert df["skip"].dtype == bool and df["skip"].all()
        assert df["seed"].dtype == np.int64 and set(df["seed"]) == {1, 2, 3}
        assert df["density"].dtype == float and set(df["density"]) == set(DENSITIES)
        assert (df["width"] == 1.0).all(), name
    runs = tables["runs"]
    assert len(runs) == 2 * 2 * 6 * 5 * 3 - 6 * 3  # CIFAR-100 VGG-16 at 0.01 is not released
    assert (runs.groupby(["dataset", "arch", "method", "density"])["seed"].nunique() == 3).all()
    assert len(tables["results"]) == len(runs) == len(tables["masks"])
    assert (tables["histories"].groupby(KEYS).size() == 250).all()
    assert tables["layers"].groupby(KEYS).size().map({37: "resnet34", 16: "vgg16"}).notna().all()


def test_layers_are_the_workbooks_model_layers(tables):
    """Each mask lists the workbook's prunable layers of its model, by name and in model order
    (the release uses the same names: no mapping), with the sizes of their weights."""
    from lib.models import build_model, prunable_layers

    layers = tables["layers"]
    position = layers.groupby(KEYS, sort=False).cumcount()
    for (arch, dataset), index in layers.groupby(["arch", "dataset"]).groups.items():
        model = prunable_layers(build_model(arch, num_classes=published.NUM_CLASSES[dataset], meta=True))
        names = list(model)
        shapes = [(int(np.prod(m.weight.shape[1:])), m.weight.shape[0]) for m in model.values()]
        g = layers.loc[index]
        assert (g.groupby(KEYS).size() == len(names)).all()
        assert g["layer"].tolist() == [names[i] for i in position[index]]
        assert list(zip(g["size_left"], g["size_right"])) == [shapes[i] for i in position[index]]
    np.testing.assert_allclose(layers["edges"], layers["layer_density"] * layers["size_left"] * layers["size_right"], atol=1e-6)


def test_runs_report_the_first_epoch_of_best_validation():
    h = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_acc": [0.5, 0.7, 0.7, 0.6],
                      "test_acc": [0.51, 0.72, 0.75, 0.6], "train_loss": [1.0, 0.9, 0.8, 0.7]})
    keys = dict(zip(KEYS, ["vgg16", True, 1.0, "cifar10", "SNIP", 0.1, 1]))
    diverged = h.assign(seed=2, train_loss=[1.0, np.nan, np.nan, np.nan])
    histories = published._keyed(pd.concat([h.assign(**keys), diverged.assign(**{**keys, "seed": 2})]))
    layers = pd.DataFrame([{**keys, "layer": "features.3", "edges": 0}])
    runs = published._runs(histories, layers).set_index("seed")
    assert runs.loc[1, ["best_epoch", "test_acc", "val_acc"]].tolist() == [2, 0.72, 0.7]  # not epoch 3
    assert runs.loc[1, "status"] == "done" and np.isnan(runs.loc[1, "diverged_epoch"])
    assert runs.loc[1, "empty_layers"] == "features.3" and runs.loc[2, "empty_layers"] == ""
    assert runs.loc[2, "status"] == "diverged" and runs.loc[2, "diverged_epoch"] == 2
    assert runs.loc[2, "epochs_run"] == 4  # the authors trained on after a non-finite loss


# ------------------------------------------------------------------------------ anomalies
def _cells(df, kind, with_seed=True):
    cols = ["dataset", "arch", "method", "density"] + (["seed"] if with_seed else [])
    return set(map(tuple, df.loc[df["kind"] == kind, cols].astype(object).to_numpy().tolist()))


def test_exactly_the_expected_cells_are_flagged(tables):
    a = tables["anomalies"]
    chance = {("cifar10", "vgg16", "GraSP", d, s) for d in DENSITIES[1:] for s in (1, 2, 3)}
    chance |= {("cifar100", "vgg16", "GraSP", d, s) for d in DENSITIES[2:] for s in (1, 2, 3)}
    chance |= {("cifar100", "vgg16", "GraSP", 0.05, 2)}  # seeds 1 and 3 trained (0.65, 0.69)
    grasp_04 = {(d, "resnet34", "GraSP", 0.4, s) for d in ("cifar10", "cifar100") for s in (1, 2, 3)}
    assert _cells(a, "chance") == chance
    assert _cells(a, "realized_density") == chance | grasp_04
    assert _cells(a, "missing", False) == {("cifar100", "vgg16", m, 0.01) for m in published.METHODS}
    assert _cells(a, "older_summary", False) == {("cifar10", "resnet34", m, d) for m in ("GraSP", "SynFlow") for d in DENSITIES}
    assert set(a["kind"]) == {"chance", "realized_density", "missing", "older_summary"}

    runs = tables["runs"].set_index(["dataset", "arch", "method", "density", "seed"])
    flagged = runs[runs["anomaly"] != ""]
    assert set(flagged.index) == chance | grasp_04
    assert (flagged.loc[list(chance), "anomaly"] == "chance; realized_density").all()
    assert set(runs.index[runs["status"] == "diverged"]) == chance  # NaN training loss from epoch 1
    assert (runs.loc[list(chance), "diverged_epoch"] == 1).all()
    at_chance = runs.loc[list(chance)]
    assert np.allclose(at_chance["test_acc"], [0.1 if d == "cifar10" else 0.01 for d in at_chance.index.get_level_values(0)])
    assert (at_chance["empty_layers"].str.split().str.len() == 15).all()
    assert not any("features.0" in empty.split() for empty in at_chance["empty_layers"])
    results = tables["results"].set_index(["dataset", "arch", "method", "density", "seed"])
    assert (results.loc[flagged.index, "anomaly"] == flagged["anomaly"]).all()


def test_anomaly_reasons_give_the_numbers(tables):
    a = tables["anomalies"]
    older = a[(a["kind"] == "older_summary") & (a["method"] == "GraSP") & (a["density"] == 0.1)]["reason"].item()
    assert "acc 0.5258" in older and "summarized_results_main.csv 0.8726" in older
    assert "1/102 (34 layers x 3 seeds)" in older and "1/111 (37 x 3)" in older
    chance = a[(a["kind"] == "chance") & (a["dataset"] == "cifar10") & (a["density"] == 0.4) & (a["seed"] == 1)]["reason"].item()
    assert chance.startswith("test accuracy 0.1000 at chance (1/10); training loss non-finite from epoch 1")
    assert "nothing kept in 15 of 16 layers (weights only in features.0)" in chance
    grasp = a[(a["kind"] == "realized_density") & (a["arch"] == "resnet34") & (a["dataset"] == "cifar10") & (a["seed"] == 1)]
    assert grasp["reason"].item().startswith("the mask keeps 0.231 of the weights, 0.579 times its nominal density 0.4")


def test_missing_lists_the_unreleased_units(tables):
    m = tables["missing"]
    assert len(m) == 6 * 3 * 2 and set(m["unit"]) == {"metrics", "training"}
    assert set(map(tuple, m[["dataset", "arch", "density"]].to_numpy().tolist())) == {("cifar100", "vgg16", 0.01)}
    assert "csv_metric/density_0.01/cifar100/vgg16/csv/summary-1.csv" in set(m["folder"])


def test_claims_and_figures_run_on_the_tables(tables):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lib import claims, plots

    table = claims.claims_table(tables["results"], tables["layers"])
    rises = table[table["statistic"] == "tau(density, delta_r_norm)"]
    assert len(rises) == 4 and (rises["value"] > 0.2).all()  # claim 1, first half, holds in the release
    fig = plots.paper_figure(tables["results"], 1, "cifar10")
    try:
        assert len(fig.axes) == 8  # 4 panels, then their right-hand twins
        assert all(len(ax.get_lines()) == 6 for ax in fig.axes)  # one line per method on each axis
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------ the converter
SMALL = ["csv_metric/density_0.01/cifar10/resnet34/csv/graph_seed-1.csv",
         "csv_metric/density_0.01/cifar10/resnet34/csv/summary-1.csv",
         "csv_metric/density_0.05/cifar10/vgg16/csv/graph_seed-2.csv",
         "csv_metric/density_0.05/cifar10/vgg16/csv/summary-2.csv",
         "summarized_results_main.csv", "summarized_results.csv"]


@pytest.fixture
def small_release(tmp_path, record):
    """A copy of six release files, or (without the release on this machine) the same six
    rebuilt from the record in the release's layout and column names."""
    root = tmp_path / "release"
    for rel in SMALL:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if RELEASE.is_dir():
            shutil.copy(RELEASE / rel, root / rel)
        else:
            _rebuild(record, rel, root / rel)
    return root


def _rebuild(record, rel, path):
    if rel.startswith("summarized"):
        name = "main" if rel == published.SUMMARIES["main"] else "older"
        path.write_bytes(gzip.decompress((published.FOLDER / published.FILES[name]).read_bytes()))
        return
    keys = published._parse_run_file(rel)
    sel = lambda df: df[(df["dataset"] == keys["dataset"]) & (df["arch"] == keys["arch"])  # noqa: E731
                        & (df["density"] == keys["density"]) & (df["seed"] == keys["seed"])]
    if keys["kind"] == "summary":
        df = sel(record["histories"]).rename(columns={"method": "prune_type"})
        df[["val_acc", "test_acc", "epoch", "train_loss", "prune_type"]].to_csv(path)
    else:
        df = sel(record["layers"]).rename(columns={"method": "prune_type"})
        out = df[["prune_type", "layer"]].assign(sparsity=df["layer_density"], rm=df["delta_r"],
                                                 rm_ub=df["delta_r"] / df["delta_r_norm"])
        for release, name in published.METRIC_NAMES.items():
            if release not in ("sparsity", "rm", "rm_norm"):
                out[release] = df[name]
        out.to_csv(path, index=False)


def _cli():
    """The converter's command-line entry point (scripts/ is not a package)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "convert_published.py"
    spec = importlib.util.spec_from_file_location("convert_published", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_converter_is_deterministic_and_faithful(small_release, tmp_path):
    first = published.convert(small_release, tmp_path / "a")
    second = published.convert(small_release, tmp_path / "b")
    assert set(first) == {"layers", "histories", "main", "older", "sources"}
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    layers = pd.read_csv(first["layers"])
    assert len(layers) == 6 * 37 + 6 * 16
    source = pd.read_csv(small_release / SMALL[0]).rename(columns={"prune_type": "method"})
    both = source.merge(layers[layers["arch"] == "resnet34"], on=["method", "layer"])
    assert len(both) == len(source) == 6 * 37
    np.testing.assert_array_equal(both["layer_density"], both["sparsity"])  # exact: no rounding
    for release, name in published.METRIC_NAMES.items():
        expected = both["rm"] / both["rm_ub"] if release == "rm_norm" else both[release]
        np.testing.assert_array_equal(both[name], expected, err_msg=name)
    histories = pd.read_csv(first["histories"])
    assert len(histories) == 2 * 6 * 250 and set(histories["seed"]) == {1, 2}
    sources = pd.read_csv(first["sources"])
    assert sorted(sources["path"]) == sorted(SMALL)
    t = published.tables(tmp_path / "a")  # a partial record still gives every table
    assert len(t["runs"]) == 12 and set(t["anomalies"]["kind"]) >= {"missing"}


def test_converter_rejects_what_is_not_the_release(small_release, tmp_path, capsys):
    main = _cli()
    for bad, message in [(tmp_path / "nowhere", "is not a folder"), (tmp_path, "has no csv_metric")]:
        with pytest.raises(ValueError, match=message) as err:
            published.convert(bad, tmp_path / "out")
        assert "\n" not in str(err.value) and "pass the folder that holds csv_metric/" in str(err.value)
    (small_release / "summarized_results.csv").unlink()
    with pytest.raises(ValueError, match="has no summarized_results.csv; pass the folder"):
        published.convert(small_release, tmp_path / "out")
    assert main(["--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "csv_metric" in err
    with pytest.raises(ValueError, match="lacks layers.csv.gz.*scripts/convert_published.py"):
        published.tables(tmp_path)


def test_converter_rejects_layers_that_are_not_the_models(small_release, tmp_path):
    path = small_release / SMALL[2]
    path.write_text(path.read_text().replace("classifier.6", "classifier.7"))
    with pytest.raises(ValueError, match="not the workbook's prunable layers of vgg16"):
        published.convert(small_release, tmp_path / "out")


def test_committed_controls_are_what_the_checker_draws_for_the_released_densities(tables):
    """data/published/controls.csv.gz (scripts/published_controls.py) holds one draw per mask;
    two ResNet-34 masks are drawn and measured again here and must come out identical."""
    from lib import controls

    table = published.controls()
    assert table is not None and table.groupby(KEYS).ngroups == len(tables["masks"])
    assert set(table["draw"]) == {0} and table["control"].all()
    layers = tables["layers"]
    for method, density in (("SNIP", 0.01), ("Rand", 0.4)):
        sel = (layers["dataset"] == "cifar10") & (layers["arch"] == "resnet34") & (layers["method"] == method) \
            & (layers["density"] == density) & (layers["seed"] == 2)
        mask = layers[sel]
        keys = mask[KEYS].iloc[0].to_dict()
        again = controls.mask_controls(keys, controls.layer_counts(mask), draws=1)
        stored = table.merge(pd.DataFrame([keys]), on=KEYS)
        assert list(stored["layer"]) == list(mask["layer"])
        # the random masks keep exactly the released per-layer counts
        np.testing.assert_array_equal(stored["edges"].to_numpy(), mask["edges"].round().to_numpy())
        for column in ("mu_hat", "delta_r_norm", "imdb_norm", "narc"):
            np.testing.assert_allclose(stored[column].to_numpy(float), again[column].to_numpy(float),
                                       rtol=1e-12, equal_nan=True, err_msg=column)
