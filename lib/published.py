"""The authors' released results, in the workbook's vocabulary, for comparison with its own runs.

This module owns the published record: the per-layer metrics, learning curves and summary tables
that the paper's authors released (github.com/VITA-Group/ramanujan-on-pai, commit
ec1d583e305bb7bfd1e9f6879f1d57f666d4b194, no licence file: the numbers are facts, reproduced
for comparison).

* :func:`convert` reads the release (that repository's layout: ``csv_metric/...`` plus the
  summary CSVs) and writes the condensed record ``data/published/`` (gzip CSVs, byte-identical
  on every run; ``data/published/README.md`` says what each column means).
* :func:`tables` turns the record into the tidy tables of :func:`lib.workbook.collect`
  (``layers``, ``masks``, ``runs``, ``results``, ``histories``, ``missing``) plus
  ``anomalies``: what in the release is broken or inconsistent is detected from the data and
  flagged, never fixed or dropped.
* :func:`authors_summary` recomputes the authors' summary table with their conventions, so
  that the tests can check the record against ``summarized_results_main.csv``.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DATASET_SHAPES
from .files import DATA, atomic_write
from .progress import bar
from .settings import KEYS
from .workbook import join_results, mask_summaries

SOURCE = "github.com/VITA-Group/ramanujan-on-pai"
COMMIT = "ec1d583e305bb7bfd1e9f6879f1d57f666d4b194"
FOLDER = DATA / "published"

# The record's key columns (every row of every per-run file); tables() adds width = 1.0.
RECORD_KEYS = ["dataset", "arch", "skip", "method", "density", "seed"]
NUM_CLASSES = {name: DATASET_SHAPES[name][0] for name in ("cifar10", "cifar100")}  # the release's datasets
ARCHS = ("resnet34", "vgg16")
METHODS = ("Rand", "ERK", "SNIP", "GraSP", "SynFlow", "iterSNIP")  # the release's prune_type
# The release's per-layer column -> the workbook's name. ``rm_norm`` is not a column of the
# release's per-layer files: the converter computes it as rm / rm_ub, as the authors' table did.
METRIC_NAMES = {
    "sparsity": "layer_density", "t1m": "mu0", "t2m": "mu_hat", "sm": "delta_s", "rm": "delta_r",
    "rm_norm": "delta_r_norm", "irm": "imdb", "irm_norm": "imdb_norm", "ism": "delta_s_imdb",
    "random_factor": "narc",
}
METRICS = list(METRIC_NAMES.values())[1:]  # layer_density is a property of the mask, not a metric
LAYER_COLUMNS = [*RECORD_KEYS, "layer", "size_left", "size_right", "edges", "layer_density", *METRICS]
HISTORY_COLUMNS = [*RECORD_KEYS, "epoch", "val_acc", "test_acc", "train_loss"]
SUMMARIES = {"main": "summarized_results_main.csv", "older": "summarized_results.csv"}
FILES = {"layers": "layers.csv.gz", "histories": "histories.csv.gz",
         **{name: f"{file}.gz" for name, file in SUMMARIES.items()}, "sources": "sources.csv"}

# Anomaly thresholds. A run is "at chance" when its reported test accuracy is this close to
# 1/classes; a mask is flagged when it keeps a fraction of the weights this far (relative) from
# its nominal density (ERK's Bernoulli draws stay within 0.4%); two summary tables disagree
# when a cell's accuracy differs by more than SUMMARY_TOLERANCE.
CHANCE_TOLERANCE = 0.005
DENSITY_TOLERANCE = 0.1
SUMMARY_TOLERANCE = 0.01

_RUN_FILE = re.compile(r"csv_metric/density_([^/]+)/([^/]+)/([^/]+)/csv/(graph_seed|summary)-(\d+)\.csv")
_FIX = ("pass the folder that holds csv_metric/ and summarized_results_main.csv: a checkout of "
        f"{SOURCE} at {COMMIT[:7]}, or /work/shared/ramanujan-on-pai-release")


# ------------------------------------------------------------------------------ converting
@functools.lru_cache(maxsize=None)
def layer_shapes(arch: str, dataset: str) -> dict[str, tuple[int, int]]:
    """``{layer name: (|L|, |R|)}`` of the workbook's model, in model order: the bipartite
    sides of each prunable weight (``in * kh * kw`` inputs, ``out`` outputs; metrics.md §1)."""
    from .models import build_model, prunable_layers

    model = build_model(arch, num_classes=NUM_CLASSES[dataset], meta=True)
    return {name: (math.prod(m.weight.shape[1:]), m.weight.shape[0])
            for name, m in prunable_layers(model).items()}


def _parse_run_file(rel: str) -> dict | None:
    match = _RUN_FILE.fullmatch(rel)
    if match is None:
        return None
    density, dataset, arch, kind, seed = match.groups()
    if dataset not in NUM_CLASSES or arch not in ARCHS:
        raise ValueError(f"{rel}: unknown dataset {dataset!r} or architecture {arch!r}; the release "
                         f"has {', '.join(NUM_CLASSES)} and {', '.join(ARCHS)}")
    return {"kind": kind, "dataset": dataset, "arch": arch, "skip": True, "density": float(density),
            "seed": int(seed)}


def _release_files(source: Path) -> tuple[list[tuple[str, dict]], dict[str, Path]]:
    """The per-run files (relative path, keys) in sorted order, and the summary tables."""
    if not source.is_dir():
        raise ValueError(f"{source} is not a folder; {_FIX}")
    runs = []
    for path in sorted((source / "csv_metric").rglob("*.csv")):
        rel = path.relative_to(source).as_posix()
        keys = _parse_run_file(rel)
        if keys is not None:
            runs.append((rel, keys))
    if not runs:
        raise ValueError(f"{source} has no csv_metric/density_*/<dataset>/<arch>/csv/*.csv files; {_FIX}")
    summaries = {name: source / file for name, file in SUMMARIES.items()}
    for path in summaries.values():
        if not path.is_file():
            raise ValueError(f"{source} has no {path.name}; {_FIX}")
    return runs, summaries


def _check_methods(df: pd.DataFrame, rel: str) -> None:
    unknown = sorted(set(df["prune_type"]) - set(METHODS))
    if unknown:
        raise ValueError(f"{rel}: unknown prune_type {unknown}; the release has {', '.join(METHODS)}")


def _layer_rows(df: pd.DataFrame, keys: dict, rel: str) -> pd.DataFrame:
    """One graph_seed file in the workbook's vocabulary, checked against the model's layers."""
    _check_methods(df, rel)
    shapes = layer_shapes(keys["arch"], keys["dataset"])  # cached: read, never modified
    frames = []
    for method, g in df.groupby("prune_type", sort=False):
        if list(g["layer"]) != list(shapes):
            raise ValueError(f"{rel}: the {method} layers {list(g['layer'])} are not the workbook's "
                             f"prunable layers of {keys['arch']} {list(shapes)} (names and order)")
        out = pd.DataFrame({k: [v] * len(g) for k, v in keys.items() if k != "kind"})
        out.insert(3, "method", method)
        out["layer"] = g["layer"].to_numpy()
        out["size_left"] = [shapes[n][0] for n in g["layer"]]
        out["size_right"] = [shapes[n][1] for n in g["layer"]]
        kept = g["sparsity"].to_numpy() * out["size_left"] * out["size_right"]
        edges = kept.round()
        if (kept - edges).abs().max() > 1e-6:
            raise ValueError(f"{rel}: {method} layer densities times the layer sizes are not whole "
                             "numbers of weights: the file does not describe the workbook's model")
        out["edges"] = edges.astype(np.int64)
        g = g.assign(rm_norm=g["rm"] / g["rm_ub"])
        for release, name in METRIC_NAMES.items():
            out[name] = g[release].to_numpy(dtype=float)
        frames.append(out)
    return pd.concat(frames, ignore_index=True)


def _history_rows(df: pd.DataFrame, keys: dict, rel: str) -> pd.DataFrame:
    _check_methods(df, rel)
    frames = []
    for method, g in df.groupby("prune_type", sort=False):
        epochs = g["epoch"].to_numpy()
        if not np.array_equal(epochs, np.arange(1, len(g) + 1)):
            raise ValueError(f"{rel}: the {method} epochs are not 1, 2, ..., {len(g)} in order")
        out = pd.DataFrame({k: [v] * len(g) for k, v in keys.items() if k != "kind"})
        out.insert(3, "method", method)
        for column in ("epoch", "val_acc", "test_acc", "train_loss"):
            out[column] = g[column].to_numpy()
        frames.append(out)
    return pd.concat(frames, ignore_index=True)


def _sorted(df: pd.DataFrame, last: str) -> pd.DataFrame:
    """Rows in a fixed order: dataset, arch, method (paper order), density, seed, then ``last``
    (a per-run position: the layer's model order or the epoch)."""
    order = df.assign(_method=df["method"].map(METHODS.index), _pos=_position(df, last))
    order = order.sort_values(["dataset", "arch", "_method", "density", "seed", "_pos"], kind="stable")
    return order.drop(columns=["_method", "_pos"]).reset_index(drop=True)


def _position(df: pd.DataFrame, last: str) -> pd.Series:
    if last == "layer":  # position within its run, which the converter checked is model order
        return df.groupby(RECORD_KEYS, sort=False).cumcount()
    return df[last]


def _csv_bytes(df: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode()


def _write_gzip(path: Path, data: bytes) -> Path:
    # mtime=0 and no file name in the header: the same data gives the same bytes on every run.
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(gzip.compress(data, compresslevel=9, mtime=0)))


def convert(source: str | Path, out: str | Path = FOLDER, progress: bool = False) -> dict[str, Path]:
    """Read the authors' release at ``source`` and write the condensed record into ``out``.

    ``source`` is a checkout of the authors' repository or a copy of its result files in the
    same layout. Writes ``layers.csv.gz``, ``histories.csv.gz``, the two summary tables
    (verbatim, gzipped) and ``sources.csv`` (size and sha256 of every file read); returns
    ``{name: path}``. Every run of the same release writes byte-identical files.
    """
    source, out = Path(source), Path(out)
    runs, summaries = _release_files(source)
    items = bar(runs, enabled=progress, desc="release files")
    layer_frames, history_frames, read = [], [], []
    for rel, keys in items:
        raw = (source / rel).read_bytes()
        read.append((rel, raw))
        df = pd.read_csv(io.BytesIO(raw))
        if keys["kind"] == "graph_seed":
            layer_frames.append(_layer_rows(df, keys, rel))
        else:
            history_frames.append(_history_rows(df, keys, rel))
    if not layer_frames or not history_frames:
        raise ValueError(f"{source}: found no graph_seed-*.csv or no summary-*.csv files; {_FIX}")
    layers = _sorted(pd.concat(layer_frames, ignore_index=True), "layer")[LAYER_COLUMNS]
    histories = _sorted(pd.concat(history_frames, ignore_index=True), "epoch")[HISTORY_COLUMNS]
    for key in ("layers", "histories"):
        df = layers if key == "layers" else histories
        dup = df.duplicated(RECORD_KEYS + (["layer"] if key == "layers" else ["epoch"]))
        if dup.any():
            raise ValueError(f"{source}: {int(dup.sum())} duplicate {key} rows; two files describe "
                             "the same run: pass one release")
    written = {"layers": _write_gzip(out / FILES["layers"], _csv_bytes(layers)),
               "histories": _write_gzip(out / FILES["histories"], _csv_bytes(histories))}
    for name, path in summaries.items():
        raw = path.read_bytes()
        read.append((path.name, raw))
        written[name] = _write_gzip(out / FILES[name], raw)
    sources = pd.DataFrame([{"path": rel, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
                            for rel, raw in sorted(read)])
    table = _csv_bytes(sources)
    written["sources"] = atomic_write(out / FILES["sources"], lambda tmp: Path(tmp).write_bytes(table))
    return written


# ------------------------------------------------------------------------------ reading
def _check_folder(folder: Path) -> None:
    absent = [f for f in FILES.values() if not (folder / f).is_file()]
    if absent:
        raise ValueError(f"{folder} lacks {', '.join(absent)}; regenerate the record with "
                         "`python scripts/convert_published.py --source <the authors' release>`")


def read_record(folder: str | Path = FOLDER) -> dict[str, pd.DataFrame]:
    """The record's files as written: ``layers``, ``histories`` (record keys, no width),
    ``main`` and ``older`` (the authors' summary tables, their column names) and ``sources``."""
    folder = Path(folder)
    _check_folder(folder)
    out = {name: pd.read_csv(folder / file) for name, file in FILES.items()}
    for name in ("layers", "histories"):
        df = out[name]
        out[name] = df.astype({"skip": bool, "seed": np.int64, "density": float})
    return out


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    """Record keys -> the workbook's key columns (:data:`lib.settings.KEYS`, width 1.0) first."""
    df = df.assign(width=1.0)
    return df[[*KEYS, *[c for c in df.columns if c not in KEYS]]]


def _runs(histories: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """One row per training run, as :func:`lib.train.train` reports one: the best epoch is the
    first of highest validation accuracy (the authors' selection too); a run whose training
    loss is ever non-finite is ``diverged`` at that epoch (the authors trained on regardless)."""
    histories = histories.reset_index(drop=True)  # idxmax below returns labels
    runs = histories.groupby(KEYS, sort=False).agg(epochs_run=("epoch", "size")).reset_index()
    finite = histories[histories["val_acc"].notna()]
    best = histories.loc[finite.groupby(KEYS, sort=False)["val_acc"].idxmax(),
                         [*KEYS, "test_acc", "val_acc", "epoch"]].rename(columns={"epoch": "best_epoch"})
    bad = histories[~np.isfinite(histories["train_loss"])]
    diverged = bad.groupby(KEYS, sort=False)["epoch"].min().astype(float).rename("diverged_epoch")
    empty = layers[layers["edges"] == 0].groupby(KEYS, sort=False)["layer"].agg(" ".join).rename("empty_layers")
    runs = runs.merge(best, on=KEYS, how="left").merge(diverged.reset_index(), on=KEYS, how="left")
    runs = runs.merge(empty.reset_index(), on=KEYS, how="left").fillna({"empty_layers": ""})
    status = np.where(runs["epochs_run"] >= histories["epoch"].max(), "done", "stopped")
    runs["status"] = np.where(runs["diverged_epoch"].notna(), "diverged", status)
    return runs[[*KEYS, "status", "test_acc", "val_acc", "best_epoch", "epochs_run", "diverged_epoch",
                 "empty_layers"]]


def _missing(layers: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """Units of the release's grid (every combination of the values it has) that it lacks."""
    present = {unit: set(df[KEYS].drop_duplicates().itertuples(index=False, name=None))
               for unit, df in (("metrics", layers), ("training", histories))}
    values = [sorted(set(layers[k].unique()) | set(histories[k].unique())) for k in KEYS]
    values[KEYS.index("method")] = [m for m in METHODS if m in values[KEYS.index("method")]]
    file = {"metrics": "graph_seed", "training": "summary"}
    rows = []
    for key in pd.MultiIndex.from_product(values):
        for unit in ("metrics", "training"):
            if key not in present[unit]:
                k = dict(zip(KEYS, key))
                folder = (f"csv_metric/density_{k['density']:g}/{k['dataset']}/{k['arch']}/csv/"
                          f"{file[unit]}-{k['seed']}.csv")
                rows.append({**k, "unit": unit, "folder": folder})
    return pd.DataFrame(rows, columns=[*KEYS, "unit", "folder"])


def _count_denominator(counts) -> int | None:
    """The smallest n for which every ``*_count`` fraction is a whole number of n-ths: the
    number of (layer, seed) rows the table pooled per cell."""
    c = np.asarray(counts, float)
    c = c[~np.isnan(c)]
    for n in range(1, 10_000):
        if np.all(np.abs(c * n - np.round(c * n)) < 1e-6):
            return n
    return None


def summary_dataset(main: pd.DataFrame, runs: pd.DataFrame) -> str | None:
    """Which dataset the authors' main summary table describes: the one whose runs give its
    ``acc`` column (mean over seeds of the reported test accuracy) to 1e-6 in every cell that
    both have (all 60 for the full record); None if no dataset does (a partial record)."""
    cell = ["model_type", "prune_type", "global_density"]
    for dataset in sorted(set(runs["dataset"])):
        acc = (runs[runs["dataset"] == dataset].groupby(["arch", "method", "density"])["test_acc"].mean()
               .rename_axis(cell).rename("record").reset_index())
        both = main.merge(acc, on=cell)
        if len(both) and np.allclose(both["acc"], both["record"], rtol=0, atol=1e-6):
            return dataset
    return None


def _anomalies(runs: pd.DataFrame, masks: pd.DataFrame, layers: pd.DataFrame, missing: pd.DataFrame,
               main: pd.DataFrame, older: pd.DataFrame) -> pd.DataFrame:
    """Every flagged cell with the reason, found from the data (thresholds above)."""
    rows = []
    runs = runs.merge(masks[[*KEYS, "realized_density", "layers"]], on=KEYS, how="left")
    kept = layers[layers["edges"] > 0].groupby(KEYS, sort=False)["layer"].agg(" ".join)
    for r in runs.itertuples(index=False):
        key = {k: getattr(r, k) for k in KEYS}
        n_empty = len(r.empty_layers.split()) if r.empty_layers else 0
        emptiness = ""
        if n_empty:
            emptiness = (f"; nothing kept in {n_empty} of {int(r.layers)} layers "
                         f"(weights only in {kept.get(tuple(key.values()), 'none')})")
        if abs(r.test_acc - 1 / NUM_CLASSES[r.dataset]) <= CHANCE_TOLERANCE:
            loss = (f"training loss non-finite from epoch {int(r.diverged_epoch)} on"
                    if r.status == "diverged" else "training loss finite")
            rows.append({**key, "kind": "chance", "reason":
                         f"test accuracy {r.test_acc:.4f} at chance (1/{NUM_CLASSES[r.dataset]}); "
                         f"{loss}{emptiness}"})
        ratio = r.realized_density / r.density
        if abs(ratio - 1) > DENSITY_TOLERANCE:
            rows.append({**key, "kind": "realized_density", "reason":
                         f"the mask keeps {r.realized_density:.3g} of the weights, {ratio:.3g} times "
                         f"its nominal density {r.density:g}{emptiness}"})
    for (dataset, arch, method, density), g in missing.groupby(["dataset", "arch", "method", "density"],
                                                                sort=False):
        units = " and ".join(sorted(set(g["unit"])))
        rows.append({"arch": arch, "skip": True, "width": 1.0, "dataset": dataset, "method": method,
                     "density": density, "seed": pd.NA, "kind": "missing", "reason":
                     f"not in the release: no {units} files for seeds "
                     f"{', '.join(map(str, sorted(set(g['seed']))))}"})
    dataset = summary_dataset(main, runs)  # None: the record cannot tell (too few runs)
    seeds = runs["seed"].nunique()
    cell = ["model_type", "prune_type", "global_density"]
    both = older.merge(main, on=cell, suffixes=("_older", "_main"))
    for arch in sorted(set(both["model_type"])):
        counts = [c for c in main.columns if c.endswith("_count")]
        n_main = _count_denominator(main.loc[main["model_type"] == arch, counts].to_numpy().ravel())
        n_older = _count_denominator(older.loc[older["model_type"] == arch, counts].to_numpy().ravel())
        for r in both[both["model_type"] == arch].itertuples(index=False):
            if abs(r.acc_older - r.acc_main) > SUMMARY_TOLERANCE:
                pooled = ""
                if n_main != n_older:
                    pooled = (f"; its *_count fractions are multiples of 1/{n_older} "
                              f"({n_older / seeds:g} layers x {seeds} seeds), the main table's of "
                              f"1/{n_main} ({n_main / seeds:g} x {seeds}): it pooled another model's layers")
                rows.append({"arch": arch, "skip": True, "width": 1.0, "dataset": dataset,
                             "method": r.prune_type, "density": r.global_density, "seed": pd.NA,
                             "kind": "older_summary", "reason":
                             f"{SUMMARIES['older']} has acc {r.acc_older:.4f} ± {r.acc_std_older:.4f}, "
                             f"{SUMMARIES['main']} {r.acc_main:.4f} ± {r.acc_std_main:.4f}{pooled}"
                             + ("" if dataset else "; which dataset the tables describe is unknown: "
                                "no dataset of the record reproduces the main table's acc")})
    out = pd.DataFrame(rows, columns=[*KEYS, "kind", "reason"])
    return out.astype({"seed": "Int64", "skip": bool, "density": float, "width": float})


def tables(folder: str | Path = FOLDER) -> dict[str, pd.DataFrame]:
    """The record as the tidy tables of :func:`lib.workbook.collect`, plus ``anomalies``.

    ``layers`` (one row per mask layer: keys, layer, sizes, edges, layer_density, metrics),
    ``masks`` (one row per mask, as :func:`lib.workbook.mask_summaries`), ``runs`` (one row
    per training run, the reported accuracy being the test accuracy at the first epoch of best
    validation accuracy),
    ``results`` (runs joined with masks as collect does; every model is full width),
    ``histories`` (learning curves), ``missing`` (units the release lacks) and ``anomalies``
    (one row per flagged cell and kind: ``chance``, ``realized_density``, ``missing``,
    ``older_summary``, with a reason). ``runs`` and ``results`` carry ``anomaly``: the kinds
    flagged for that run, ``"; "``-joined, ``""`` when none.
    """
    record = read_record(folder)
    layers = _keyed(record["layers"])
    histories = _keyed(record["histories"])
    masks = mask_summaries(layers)
    runs = _runs(histories, layers)
    missing = _missing(layers, histories)
    anomalies = _anomalies(runs, masks, layers, missing, record["main"], record["older"])
    flagged = anomalies[anomalies["seed"].notna()].astype({"seed": np.int64})
    kinds = flagged.groupby(KEYS, sort=False)["kind"].agg("; ".join).rename("anomaly")
    runs = runs.merge(kinds.reset_index(), on=KEYS, how="left").fillna({"anomaly": ""})
    results = join_results(runs, masks)
    return {"layers": layers, "masks": masks, "runs": runs, "results": results,
            "histories": histories, "missing": missing, "anomalies": anomalies}


# ------------------------------------------------------------------------------ the authors' table
def authors_summary(layers: pd.DataFrame, runs: pd.DataFrame, dataset: str = "cifar10") -> pd.DataFrame:
    """The authors' summary table of ``dataset`` recomputed from ``tables()['layers']`` and
    ``['runs']``, in their column names (``model_type``, ``prune_type``, ``global_density``,
    ``<metric>_mean/_std/_count``, ``acc``, ``acc_std``) and with their conventions, found by
    matching ``summarized_results_main.csv``:

    * ``acc``: mean over seeds of the reported test accuracy; ``acc_std``: its sample standard
      deviation (ddof = 1).
    * ``<m>_mean``: the mean over the (layer, seed) rows where ``m`` is defined, computed as
      sum over seeds of n_s * mean_s / sum of n_s, so NaN when one seed has no defined layer.
    * ``<m>_std``: sqrt(sum of n_s * var_s / sum of n_s), var_s the per-seed sample variance:
      a within-seed spread, NaN when a seed has fewer than 2 defined layers.
    * ``<m>_count``: the fraction of (layer, seed) rows where ``m`` is defined.
    """
    cell = ["arch", "method", "density"]
    lay = layers[layers["dataset"] == dataset]
    columns = list(METRIC_NAMES.values())
    per_seed = lay.groupby([*cell, "seed"])[columns]
    n = per_seed.count()
    size = per_seed.size()
    weighted_mean, weighted_var = n * per_seed.mean(), n * per_seed.var()
    # A seed with no defined layer (mean NaN) or fewer than two (variance NaN) makes the cell
    # NaN in the authors' table, where a pooled mean would skip that seed: masked here.
    nan_mean = weighted_mean.isna().groupby(level=cell).any()
    nan_var = weighted_var.isna().groupby(level=cell).any()
    weighted_mean, weighted_var = weighted_mean.groupby(level=cell), weighted_var.groupby(level=cell)
    total = n.groupby(level=cell).sum()
    out = {}
    for release, column in METRIC_NAMES.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{release}_mean"] = (weighted_mean[column].sum() / total[column]).mask(nan_mean[column])
            out[f"{release}_std"] = np.sqrt(weighted_var[column].sum() / total[column]).mask(nan_var[column])
        out[f"{release}_count"] = total[column] / size.groupby(level=cell).sum()
    acc = runs[runs["dataset"] == dataset].groupby(cell)["test_acc"]
    out["acc"], out["acc_std"] = acc.mean(), acc.std(ddof=1)
    table = pd.DataFrame(out).loc[total.index]  # the cells with layers, in sorted order
    return table.rename_axis(["model_type", "prune_type", "global_density"]).reset_index()


# ------------------------------------------------------------------------------ controls
CONTROLS = "controls.csv.gz"  # derived by this workbook (lib.controls), not part of the release


def write_controls(table: pd.DataFrame, folder: str | Path = FOLDER) -> Path:
    """Write the density-matched controls of the record's masks (byte-identical for the same table)."""
    return _write_gzip(Path(folder) / CONTROLS, _csv_bytes(table))


def controls(folder: str | Path = FOLDER) -> pd.DataFrame | None:
    """The density-matched controls of the record's masks (``scripts/published_controls.py``),
    one row per control layer with ``control`` and ``draw``; ``None`` if not computed."""
    path = Path(folder) / CONTROLS
    if not path.is_file():
        return None
    return pd.read_csv(path).astype({"skip": bool, "seed": np.int64, "density": float})
