"""The paper's four claims (experiments.md), tested with numbers instead of by eye.

Reads the tidy ``results`` table (one row per mask and seed: accuracy joined with the
model-level metrics) and the ``layers`` table of :func:`lib.workbook.collect`, and returns one
tidy table, one row per (claim, dataset, model, density, statistic):

1. ``delta_r`` rises with density: Kendall tau of (density, ``delta_r_norm``) over all masks;
   but does not rank methods at a fixed density: tau of (accuracy, ``delta_r_norm``) across
   methods (means over seeds) at each density.
2. IMDB ranks methods by accuracy at a fixed density: tau of (accuracy, ``imdb_norm``).
3. ``narc <= 0`` for Rand and ERK: the share of such masks (model-level mean) and of their
   defined layers with ``narc <= 0``.
4. Without skip connections NaRC relates to accuracy (Fig. 2): tau of (``narc``, accuracy) over
   all masks of ResNet-34 with and without skips, and at each density across methods.

Kendall tau is NaN where fewer than 3 points are defined or one side is constant.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

ACC = "test_acc"
COLUMNS = ["claim", "dataset", "arch", "skip", "density", "statistic", "value", "n"]


def _tau(x, y) -> tuple[float, int]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan, n
    return float(kendalltau(x[ok], y[ok]).statistic), n


def _row(claim, dataset, arch, skip, density, statistic, value, n) -> dict:
    return dict(zip(COLUMNS, (claim, dataset, arch, skip, density, statistic, value, n)))


def claims_table(results: pd.DataFrame, layers: pd.DataFrame | None = None) -> pd.DataFrame:
    """All four claims as one tidy table (see the module docstring)."""
    rows = []
    usable = results.copy()
    if "status" in usable:  # a diverged run has no accuracy to rank
        usable.loc[usable["status"] != "done", ACC] = np.nan
    for (dataset, arch, skip), model in usable.groupby(["dataset", "arch", "skip"], sort=True):
        tau, n = _tau(model["density"], model["delta_r_norm"])
        rows.append(_row("1: delta_r rises with density", dataset, arch, skip, "all",
                         "tau(density, delta_r_norm)", tau, n))
        means = model.groupby(["density", "method"])[[ACC, "delta_r_norm", "imdb_norm", "narc"]].mean().reset_index()
        for density, at in means.groupby("density"):
            tau, n = _tau(at[ACC], at["delta_r_norm"])
            rows.append(_row("1: delta_r ranks methods at fixed density", dataset, arch, skip, density,
                             "tau(accuracy, delta_r_norm)", tau, n))
            tau, n = _tau(at[ACC], at["imdb_norm"])
            rows.append(_row("2: imdb ranks methods at fixed density", dataset, arch, skip, density,
                             "tau(accuracy, imdb_norm)", tau, n))
        random = model[model["method"].isin(["Rand", "ERK"])]
        defined = random["narc"].dropna()
        rows.append(_row("3: narc <= 0 for Rand and ERK", dataset, arch, skip, "all",
                         "share of Rand/ERK masks with mean narc <= 0",
                         float((defined <= 0).mean()) if len(defined) else math.nan, len(defined)))
        if layers is not None and len(layers):
            lay = layers[(layers["dataset"] == dataset) & (layers["arch"] == arch) & (layers["skip"] == skip)
                         & layers["method"].isin(["Rand", "ERK"])]["narc"].dropna()
            rows.append(_row("3: narc <= 0 for Rand and ERK", dataset, arch, skip, "all",
                             "share of defined Rand/ERK layers with narc <= 0",
                             float((lay <= 0).mean()) if len(lay) else math.nan, len(lay)))
        if arch == "resnet34":
            tau, n = _tau(model["narc"], model[ACC])
            rows.append(_row("4: narc relates to accuracy (Fig. 2)", dataset, arch, skip, "all",
                             "tau(narc, accuracy) over all masks", tau, n))
            for density, at in means.groupby("density"):
                tau, n = _tau(at["narc"], at[ACC])
                rows.append(_row("4: narc relates to accuracy (Fig. 2)", dataset, arch, skip, density,
                                 "tau(narc, accuracy) across methods", tau, n))
    return pd.DataFrame(rows, columns=COLUMNS)


def claims_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One line per (claim, statistic, dataset, model): the value, or the mean over densities."""
    t = table.copy()
    t["model"] = [f"{a}{'' if s else ' (no skip)'}" for a, s in zip(t["arch"], t["skip"])]
    g = t.groupby(["claim", "statistic", "dataset", "model"], sort=True)
    out = g.agg(value=("value", "mean"), densities=("density", lambda d: int((d != "all").sum())),
                defined=("value", lambda v: int(v.notna().sum()))).reset_index()
    return out


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    def fmt(v):
        if isinstance(v, float):
            return "NaN" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
