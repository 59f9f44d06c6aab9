"""Holding the workbook against the published record, cell by cell.

A *cell* is (dataset, arch, method, density). For each, the workbook's own masks (drawn by
the same settings as a grid, on the record's models: full width, CIFAR-shaped) are compared
with the authors' released numbers (:mod:`lib.published`): the model-level metrics, every
layer's density, and the accuracy where the workbook has trained the same cell itself. A
quantity is *within the authors' seed spread* when the workbook's value (the mean of its
``m`` seeds) lies in the 95% prediction interval of such a mean drawn like theirs:
``mean ± t(0.975, n-1) * sd * sqrt(1/m + 1/n)`` over their ``n`` seeds (3 seeds against one:
±4.97 sd), or equals their value to 1e-6 where their seeds agree exactly. At that level about
one comparison in twenty falls outside by chance alone. A cell's layer densities are within when no more of its
layers fall outside than a 5% rate would put there by chance (the binomial 95% quantile).

Methods that score on data (SNIP, GraSP, iterSNIP) and every accuracy need the dataset: without
it those cells are listed as ``needs <dataset>``, never computed on other data.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy.stats import binom
from scipy.stats import t as t_dist

from . import published, workbook
from .data import on_disk
from .pruning import method_of
from .settings import KEYS, Grid

LEVEL = 0.95  # of the prediction interval that "within the seed spread" means
TOLERANCE = 1e-6  # where the authors' seeds agree exactly: |own - mean| <= TOLERANCE * (1 + |mean|)
QUANTITIES = ("layer_density", "delta_r_norm", "imdb_norm", "narc", "mu_hat", "test_acc")
CELL = ["dataset", "arch", "method", "density"]
DISPLAY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def reference_grid(grid: Grid, record: dict[str, pd.DataFrame], dataset: str = "cifar10") -> Grid:
    """The grid whose masks are compared with the record's ``dataset``: the record's
    architectures, methods (those that score on data only if ``dataset`` is on disk) and
    densities that ``grid`` has in ``archs``, ``methods`` and ``reference_densities``; full
    width, with skips, no controls, on ``grid``'s seeds, method options and run folder."""
    layers = record["layers"]  # in both published.read_record() and published.tables()
    cells = layers[(layers["dataset"] == dataset) & layers["density"].isin(grid.reference_densities)]
    data = on_disk(dataset, grid.data_root)
    methods = [m for m in dict.fromkeys(cells["method"])
               if m in grid.methods and (not method_of(m).needs_data or data)]
    return dataclasses.replace(
        grid, dataset=dataset, archs=tuple(a for a in dict.fromkeys(cells["arch"]) if a in grid.archs),
        no_skip=False, methods=tuple(methods), densities=tuple(sorted(cells["density"].unique())),
        metric_width=1.0, train_width=1.0, control_draws=0)


def job_reference(grid: Grid, arch: str, density: float, seed: int,
                  dataset: str = "cifar10") -> Grid | None:
    """The part of the reference grid that the job of (``arch``, ``density``, ``seed``) draws
    and measures, so that 05 finds its masks cached (None: nothing of this job's)."""
    if density not in grid.reference_densities:
        return None
    reference = reference_grid(grid, published.read_record(), dataset)
    if arch not in reference.archs or density not in reference.densities:
        return None
    return dataclasses.replace(reference, archs=(arch,), densities=(density,), seeds=(seed,))


def reference_done(reference: Grid) -> bool:
    """Whether every mask of ``reference`` is drawn and measured."""
    return all(workbook.stage_done(reference, d, "03_spectral") for d in reference.densities)


def ensure_masks(reference: Grid, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Draw and measure the reference grid's masks (cached units); its ``layers`` and ``masks``
    (empty where the reference has no density, architecture or method: nothing to compare)."""
    if not (reference.densities and reference.archs and reference.methods):
        layers = pd.DataFrame(columns=[*KEYS, "layer", "layer_density"])
    else:
        layers = pd.concat([workbook.metrics_density(reference, d, progress=progress) for d in reference.densities],
                           ignore_index=True)
    return {"layers": layers, "masks": workbook.mask_summaries(layers)}


def half_width(sd: float, n: int, m: int = 1) -> float:
    """Half-width of the prediction interval of a mean of ``m`` more seeds, from ``n`` seeds' sd."""
    if n < 2 or not sd > 0:
        return 0.0
    return float(t_dist.ppf(0.5 + LEVEL / 2, n - 1) * sd * np.sqrt(1 / max(m, 1) + 1 / n))


def _verdict(own: float, mean: float, sd: float, n: int, m: int = 1) -> str:
    if np.isnan(own) and np.isnan(mean):
        return "undefined in both"
    if np.isnan(own) or np.isnan(mean):
        return "defined in one only"
    allowed = max(half_width(sd, n, m), TOLERANCE * (1 + abs(mean)))
    return "within" if abs(own - mean) <= allowed else "outside"


def allowed_outside(layers: int) -> int:
    """The most layers that may fall outside their intervals by chance alone (binomial 95%)."""
    return int(binom.ppf(LEVEL, layers, 1 - LEVEL))


def _spread(values: pd.DataFrame, by: list[str], column: str) -> pd.DataFrame:
    g = values.groupby(by, sort=False)[column]
    return pd.DataFrame({"published_mean": g.mean(), "published_sd": g.std(ddof=1),
                         "published_seeds": g.count()}).reset_index()


def layer_differences(own_layers: pd.DataFrame, record_layers: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, layer): the workbook's layer density (mean over its seeds) against the
    authors' mean ± sd over theirs, the difference and its verdict."""
    keys = [*CELL, "layer"]
    pub = _spread(record_layers, keys, "layer_density")
    g = own_layers.groupby(keys, sort=False)["layer_density"]
    own = pd.DataFrame({"own": g.mean(), "own_seeds": g.count()}).reset_index()
    out = own.merge(pub, on=keys, how="left")
    out["difference"] = out["own"] - out["published_mean"]
    out["verdict"] = [_verdict(o, mu, sd, n, m) for o, mu, sd, n, m in
                      zip(out["own"], out["published_mean"], out["published_sd"], out["published_seeds"], out["own_seeds"])]
    return out


def compare(reference: Grid, own: dict[str, pd.DataFrame], record: dict[str, pd.DataFrame],
            own_results: pd.DataFrame | None = None) -> pd.DataFrame:
    """The verdict table: one row per (cell, quantity) of the record's ``reference.dataset``.

    ``own``: the reference grid's ``layers`` and ``masks`` (:func:`ensure_masks`);
    ``own_results``: the workbook's ``results`` of the same dataset at full width, if any.
    Quantities: ``layer_density`` (the worst layer: the largest |difference| in units of the
    authors' sd), the model-level metric means, and ``test_acc``. Cells the workbook could not
    compute say why in ``verdict`` (``needs CIFAR-10``); ``note`` flags the record's anomalies
    and SynFlow run with fewer rounds than the paper's 100.
    """
    dataset = reference.dataset
    masks = record["masks"][(record["masks"]["dataset"] == dataset) & record["masks"]["density"].isin(reference.densities)
                            & record["masks"]["arch"].isin(reference.archs)]
    results = record["results"][record["results"]["dataset"] == dataset]
    cells = masks[CELL].drop_duplicates()
    needs = f"needs {DISPLAY.get(dataset, dataset)}"
    rows = []
    layers = layer_differences(own["layers"], record["layers"][record["layers"]["dataset"] == dataset]) \
        if len(own["layers"]) else pd.DataFrame(columns=[*CELL, "layer"])
    own_masks = own["masks"].groupby(CELL, sort=False) if len(own["masks"]) else None
    have_runs = own_results is not None and len(own_results)
    anomalies = results.groupby(CELL, sort=False)["anomaly"].agg(lambda a: "; ".join(sorted({x for x in a if x})))
    for cell in cells.itertuples(index=False):
        key = tuple(cell)
        base = dict(zip(CELL, key))
        drawn = cell.method in reference.methods or method_of(cell.method).needs_data
        missing = needs if drawn else "not in this grid's methods"
        note = anomalies.get(key, "")
        if cell.method == "SynFlow" and reference.rounds < 100:
            note = "; ".join(filter(None, [note, f"SynFlow with {reference.rounds} rounds (published: 100)"]))
        computed = own_masks is not None and key in own_masks.groups
        # the worst layer of the cell
        cl = layers[(layers[CELL] == pd.Series(base)).all(axis=1)] if computed else layers.iloc[:0]
        if len(cl):
            worst = cl.loc[cl["difference"].abs().idxmax()]
            outside, allowed = int((cl["verdict"] == "outside").sum()), allowed_outside(len(cl))
            rows.append({**base, "quantity": "layer_density", "own": worst["own"], "own_seeds": worst["own_seeds"],
                         "published_mean": worst["published_mean"], "published_sd": worst["published_sd"],
                         "published_seeds": worst["published_seeds"], "difference": worst["difference"],
                         "verdict": "within" if outside <= allowed else "outside",
                         "detail": f"largest |difference| at {worst['layer']}; {outside} of {len(cl)} layers "
                                   f"outside (chance allows {allowed}); mean |difference| "
                                   f"{cl['difference'].abs().mean():.2e}", "note": note})
        else:
            rows.append({**base, "quantity": "layer_density", "verdict": missing, "note": note})
        pub_cell = masks[(masks[CELL] == pd.Series(base)).all(axis=1)]
        for q in QUANTITIES[1:-1]:
            mean, sd, n = pub_cell[q].mean(), pub_cell[q].std(ddof=1), int(pub_cell[q].notna().sum())
            row = {**base, "quantity": q, "published_mean": mean, "published_sd": sd, "published_seeds": n,
                   "note": note}
            if computed:
                mine = own_masks.get_group(key)[q]
                value, m = float(mine.mean()), int(mine.notna().sum())
                row.update(own=value, own_seeds=m, difference=value - mean, verdict=_verdict(value, mean, sd, n, m))
            else:
                row["verdict"] = missing
            rows.append(row)
        pub_runs = results[(results[CELL] == pd.Series(base)).all(axis=1) & (results["status"] == "done")]
        mean, sd = pub_runs["test_acc"].mean(), pub_runs["test_acc"].std(ddof=1)
        row = {**base, "quantity": "test_acc", "published_mean": mean, "published_sd": sd,
               "published_seeds": len(pub_runs), "note": note, "verdict": needs}
        if have_runs:
            mine = own_results[(own_results[CELL] == pd.Series(base)).all(axis=1) & (own_results["status"] == "done")]
            if len(mine):
                value = float(mine["test_acc"].mean())
                row.update(own=value, own_seeds=len(mine), difference=value - mean,
                           verdict=_verdict(value, mean, sd, len(pub_runs), len(mine)))
        rows.append(row)
    columns = [*CELL, "quantity", "own", "own_seeds", "published_mean", "published_sd", "published_seeds",
               "difference", "verdict", "detail", "note"]
    return pd.DataFrame(rows).reindex(columns=columns)


def tally(table: pd.DataFrame) -> pd.DataFrame:
    """Cells per (method, quantity, verdict): the summary the README shows."""
    return (table.groupby(["dataset", "method", "quantity", "verdict"], sort=False).size()
            .rename("cells").reset_index())


def summary(table: pd.DataFrame) -> str:
    """What reproduces and what does not, in sentences generated from ``table``."""
    if table.empty:
        return "No cell compared: the grid's `reference_densities`, `archs` or `methods` share none with the record."
    lines = []
    for dataset, t in table.groupby("dataset", sort=False):
        name = DISPLAY.get(dataset, dataset)
        done = t[t["verdict"].isin(["within", "outside"])]
        lines.append(f"**{name}**: {len(done)} of {len(t)} comparisons computed "
                     f"({int((done['verdict'] == 'within').sum())} within the authors' seed spread, "
                     f"{int((done['verdict'] == 'outside').sum())} outside, where chance alone would put about "
                     f"{(1 - LEVEL) * len(done):.0f}); {int(t['verdict'].str.startswith('needs').sum())} need "
                     f"the dataset; {int(t['verdict'].str.contains('one only|both').sum())} are undefined "
                     f"on one side or both.")
        for (method, quantity), g in done.groupby(["method", "quantity"], sort=False):
            bad = g[g["verdict"] == "outside"]
            notes = "; ".join(sorted({n for n in g["note"].fillna("") if "rounds" in n}))
            notes = f" Note: {notes}." if notes else ""
            if len(bad):
                where = ", ".join(f"{r.arch} {r.density:g}" for r in bad.itertuples())
                lines.append(f"- {method} {quantity}: outside at {where} "
                             f"(largest |difference| {bad['difference'].abs().max():.3g}).{notes}")
            else:
                lines.append(f"- {method} {quantity}: within at all {len(g)} cells.{notes}")
    return "\n".join(lines)


def reproduce(grid: Grid, record: dict[str, pd.DataFrame], datasets=("cifar10",),
              progress: bool = True) -> dict[str, pd.DataFrame]:
    """Everything ``05_reproduction`` reports for ``datasets``: ``cells`` (:func:`compare`) and
    ``layers`` (:func:`layer_differences`). The workbook's own accuracies enter where ``grid``
    trains that dataset at full width (the paper profile)."""
    cells, layers = [], []
    for dataset in datasets:
        reference = reference_grid(grid, record, dataset)
        own = ensure_masks(reference, progress=progress)
        own_results = None
        if grid.dataset == dataset and grid.train_width == 1.0:
            own_results = workbook.collect(grid)["results"]
        cells.append(compare(reference, own, record, own_results))
        rec_layers = record["layers"][record["layers"]["dataset"] == dataset]
        layers.append(layer_differences(own["layers"], rec_layers))
    return {"cells": pd.concat(cells, ignore_index=True), "layers": pd.concat(layers, ignore_index=True)}
