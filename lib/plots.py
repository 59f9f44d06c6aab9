"""Figures: the notebooks' per-layer plots and the paper's Figures 1-5.

Every function reads tidy tables (:func:`lib.workbook.collect`, or the tables the notebooks
build) and returns a matplotlib ``Figure``; nothing reads files or folder names. Paper layout
(Figures 1-5): density on x (log scale), accuracy solid on the left axis, a graph metric
dashed on the right axis, one colour per method (in :data:`lib.pruning.METHODS` order), bands
of one standard deviation over seeds. :func:`save` writes PNG and SVG files that are
byte-identical when the figure is, so redrawing unchanged data leaves git clean.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from .files import atomic_write
from .pruning import METHODS

LABELS = {
    "test_acc": "test accuracy",
    "delta_r_norm": "normalised Δr",
    "imdb_norm": "normalised IMDB",
    "narc": "NaRC",
    "delta_r": "Δr",
    "delta_s": "Δs",
    "imdb": "IMDB",
    "density": "density (fraction of weights kept)",
}

# (title, rows of (arch, skip), columns of (solid metric, dashed metric)) per paper figure.
FIGURES = {
    1: ("Accuracy and the Ramanujan gap", [("resnet34", True), ("vgg16", True)],
        [("test_acc", "delta_r_norm"), ("test_acc", "imdb_norm")]),
    2: ("Accuracy and NaRC with and without skip connections", [("resnet34", True), ("resnet34", False)],
        [("test_acc", "narc")]),
    3: ("Accuracy, IMDB and randomness", [("resnet34", True), ("vgg16", True)],
        [("test_acc", "narc"), ("imdb_norm", "narc")]),
}
FIGURES[4] = ("Accuracy and the Ramanujan gap", *FIGURES[1][1:])  # Fig. 1 on CIFAR-100
FIGURES[5] = ("Accuracy, IMDB and randomness", *FIGURES[3][1:])  # Fig. 3 on CIFAR-100


def palette(methods) -> dict:
    """A colour per method, fixed by its place in the registry (the same in every figure)."""
    known = list(METHODS)
    ordered = [m for m in known if m in set(methods)] + sorted(set(methods) - set(known))
    colors = sns.color_palette("tab10", len(known) + len(ordered))
    extra = iter(colors[len(known):])
    return {m: colors[known.index(m)] if m in known else next(extra) for m in ordered}


def _variant(arch: str, skip: bool) -> str:
    name = {"resnet34": "ResNet-34", "vgg16": "VGG-16"}.get(arch, arch)
    return name if skip else f"{name} (no skip)"


def _band(ax, df: pd.DataFrame, column: str, color, style: str):
    """Mean over seeds against density, with a ±1 std band where there are several seeds."""
    g = df.groupby("density")[column].agg(["mean", "std", "count"]).reset_index().dropna(subset=["mean"])
    if g.empty:
        return
    ax.plot(g["density"], g["mean"], style, color=color, marker="o" if style == "-" else "s",
            markersize=3.5, linewidth=1.6)
    spread = g["std"].where(g["count"] > 1)
    if spread.notna().any():
        ax.fill_between(g["density"], g["mean"] - spread, g["mean"] + spread, color=color, alpha=0.15,
                        linewidth=0)


def paper_figure(results: pd.DataFrame, number: int, dataset: str) -> plt.Figure:
    """Figure ``number`` (1-5) of the paper from the ``results`` table of one dataset."""
    if number not in FIGURES:
        raise ValueError(f"the paper has Figures 1-5, got {number!r}")
    title, rows, cols = FIGURES[number]
    df = results[results["dataset"] == dataset].copy()
    if "status" in df:  # a run that diverged (or sits at chance) has no accuracy to draw
        df.loc[df["status"] != "done", [c for c in ("test_acc", "val_acc") if c in df]] = float("nan")
    colors = palette(df["method"].unique())
    if number == 2:  # one row, the two variants side by side
        panels = [[(arch, skip, cols[0]) for arch, skip in rows]]
    else:
        panels = [[(arch, skip, c) for c in cols] for arch, skip in rows]
    n_rows, n_cols = len(panels), len(panels[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.6 * n_cols, 3.9 * n_rows), squeeze=False)
    for r, row in enumerate(panels):
        for c, (arch, skip, (solid, dashed)) in enumerate(row):
            ax = axes[r][c]
            twin = ax.twinx()
            sub = df[(df["arch"] == arch) & (df["skip"] == skip)]
            for method, color in colors.items():
                m = sub[sub["method"] == method]
                _band(ax, m, solid, color, "-")
                _band(twin, m, dashed, color, "--")
            ax.set_xscale("log")
            ticks = sorted(df["density"].dropna().unique())
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel(LABELS["density"])
            ax.set_ylabel(f"{LABELS.get(solid, solid)} (solid)")
            twin.set_ylabel(f"{LABELS.get(dashed, dashed)} (dashed)")
            ax.set_title(f"{_variant(arch, skip)}: {LABELS.get(solid, solid)} vs {LABELS.get(dashed, dashed)}",
                         fontsize=10)
            ax.grid(alpha=0.3)
            if sub.empty:
                ax.text(0.5, 0.5, "no results", transform=ax.transAxes, ha="center", va="center")
    handles = [Line2D([], [], color=col, lw=2, label=m) for m, col in colors.items()]
    handles += [Line2D([], [], color="0.3", ls="-", label="solid: left axis"),
                Line2D([], [], color="0.3", ls="--", label="dashed: right axis")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, 0.0), fontsize=9)
    fig.suptitle(f"Figure {number} ({dataset}): {title}", fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


# No dates or version strings in the files, and SVG element ids drawn from a fixed salt.
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


def save(fig: plt.Figure, folder: str | Path, name: str) -> list[Path]:
    """Save ``fig`` as ``<folder>/<name>.png`` and ``.svg`` (atomically, reproducibly)."""
    out = []
    with plt.rc_context({"svg.hashsalt": name}):
        for ext in ("png", "svg"):
            path = Path(folder) / f"{name}.{ext}"
            atomic_write(path, lambda tmp, ext=ext: fig.savefig(
                tmp, format=ext, dpi=130, bbox_inches="tight", metadata=_METADATA[ext]))
            out.append(path)
    return out


def _layer_index(df: pd.DataFrame) -> pd.DataFrame:
    """Number the layers of each model in model order (the tables keep that order)."""
    df = df.copy()
    df["layer_index"] = df.groupby(["arch", "skip", "method", "seed"], sort=False).cumcount()
    df["model"] = [_variant(a, s) for a, s in zip(df["arch"], df["skip"])]
    return df


def layer_densities(df: pd.DataFrame) -> plt.Figure:
    """Notebook 01: per-layer density (y) by layer (x), one line per method, a panel per model."""
    df = _layer_index(df)
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.6), squeeze=False)
    colors = palette(df["method"].unique())
    for ax, model in zip(axes[0], models):
        sub = df[df["model"] == model]
        sns.lineplot(sub, x="layer_index", y="density", hue="method", palette=colors, ax=ax,
                     errorbar=None, marker="o", markersize=3)
        ax.set(title=model, xlabel="layer (model order)", ylabel="layer density", yscale="log")
    fig.tight_layout()
    return fig


def learning_curves(history: pd.DataFrame) -> plt.Figure:
    """Notebook 02: test accuracy by epoch, one line per method, a panel per model."""
    df = history.copy()
    df["model"] = [_variant(a, s) for a, s in zip(df["arch"], df["skip"])]
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5.2 * max(len(models), 1), 3.6), squeeze=False)
    colors = palette(df["method"].unique()) if len(df) else {}
    for ax, model in zip(axes[0], models):
        sns.lineplot(df[df["model"] == model], x="epoch", y="test_acc", hue="method", palette=colors,
                     ax=ax, marker="o", markersize=3)
        ax.set(title=model, xlabel="epoch", ylabel="test accuracy")
    fig.tight_layout()
    return fig


def layer_metrics(df: pd.DataFrame, metrics=("delta_r", "delta_s", "imdb", "narc")) -> plt.Figure:
    """Notebook 03: per-layer metrics (rows) by layer for each model (columns), one line per method."""
    df = _layer_index(df)
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(len(metrics), len(models), figsize=(5.2 * len(models), 2.6 * len(metrics)),
                             squeeze=False, sharex="col")
    colors = palette(df["method"].unique())
    for c, model in enumerate(models):
        sub = df[df["model"] == model]
        for r, metric in enumerate(metrics):
            ax = axes[r][c]
            sns.lineplot(sub, x="layer_index", y=metric, hue="method", palette=colors, ax=ax,
                         errorbar=None, marker="o", markersize=3, legend=(r == 0 and c == 0))
            ax.set(ylabel=LABELS.get(metric, metric), xlabel="layer (model order)" if r == len(metrics) - 1 else "")
            if r == 0:
                ax.set_title(model)
    fig.tight_layout()
    return fig


def figure_numbers(datasets) -> dict[str, list[int]]:
    """Which paper figures each dataset gets: 4 and 5 are Figures 1 and 3 on CIFAR-100."""
    return {d: ([4, 5] if d == "cifar100" else [1, 2, 3]) for d in datasets}


def draw_all(results: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Draw and save every figure the results support; return the PNG paths. Figure 2 needs
    ResNet-34 without skips: it is left out where the results have none."""
    written = []
    for dataset, numbers in figure_numbers(sorted(results["dataset"].dropna().unique())).items():
        for n in numbers:
            if n == 2 and not (~results["skip"].astype(bool)).any():
                continue
            fig = paper_figure(results, n, dataset)
            written.append(save(fig, folder, f"fig{n}_{dataset}")[0])
            plt.close(fig)
    return written


# Per-density statistic of each metric in lib.claims.claims_table.
TAU_STATISTICS = {
    "delta_r_norm": "tau(accuracy, delta_r_norm)",
    "imdb_norm": "tau(accuracy, imdb_norm)",
    "narc": "tau(narc, accuracy) across methods",
}


def tau_by_density(table: pd.DataFrame, metric: str = "imdb_norm", dataset: str | None = None,
                   alpha: float = 0.05) -> plt.Figure:
    """Kendall tau of accuracy and ``metric`` across methods at each density, real masks beside
    their density-matched controls, one panel per model, from :func:`lib.claims.claims_table`.

    Bars: the seed-bootstrap interval (absent with one seed); filled markers: exact permutation
    p < ``alpha`` at that density. The panel title gives the stratified tau over densities and
    its p-value for both.
    """
    from .claims import CONTROL

    if metric not in TAU_STATISTICS:
        raise ValueError(f"no per-density tau for {metric!r}; choose one of {', '.join(TAU_STATISTICS)}")
    real_name = TAU_STATISTICS[metric]
    series = {"real masks": (real_name, "tab:blue", "o"),
              f"{CONTROL}": (f"{real_name} of {CONTROL}", "tab:gray", "s")}
    t = table if dataset is None else table[table["dataset"] == dataset]
    t = t[t["statistic"].isin([name for name, _, _ in series.values()]
                              + [f"stratified {name}" for name, _, _ in series.values()])]
    models = list(dict.fromkeys(zip(t["arch"], t["skip"])))
    panels = max(len(models), 1)
    fig, axes = plt.subplots(1, panels, figsize=(max(4.6 * panels, 6.4), 3.8 + 0.3 * (panels == 1)),
                             squeeze=False, sharey=True)
    for ax, (arch, skip) in zip(axes[0], models):
        sub = t[(t["arch"] == arch) & (t["skip"] == skip)]
        titles = []
        for k, (label, (name, color, marker)) in enumerate(series.items()):
            rows = sub[(sub["statistic"] == name) & (sub["density"].astype(str) != "all")].copy()
            if rows.empty:
                continue
            rows["density"] = rows["density"].astype(float)
            rows = rows.sort_values("density")
            x = rows["density"].to_numpy() * (1.06 if k else 1 / 1.06)  # side by side on a log axis
            y = rows["value"].to_numpy(float)
            low = (y - rows["ci_low"].to_numpy(float))
            high = (rows["ci_high"].to_numpy(float) - y)
            ax.errorbar(x, y, yerr=[low, high], fmt="none", ecolor=color, elinewidth=1.2, capsize=3)
            significant = rows["p_value"].to_numpy(float) < alpha
            ax.plot(x, y, "-", color=color, lw=1, alpha=0.6)
            ax.scatter(x[significant], y[significant], color=color, marker=marker, s=36, zorder=3)
            ax.scatter(x[~significant], y[~significant], facecolor="white", edgecolor=color, marker=marker, s=36,
                       zorder=3)
            pooled = sub[sub["statistic"] == f"stratified {name}"]
            if len(pooled):
                r = pooled.iloc[0]
                titles.append(f"{'real' if k == 0 else 'control'} {r['value']:+.2f} (p={r['p_value']:.2g})")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ticks = sorted(t["density"][t["density"].astype(str) != "all"].astype(float).unique())
        ax.set_xticks(ticks, [f"{d:g}" for d in ticks])
        ax.minorticks_off()
        ax.set_ylim(-1.1, 1.1)
        ax.set_xlabel(LABELS["density"])
        ax.set_title(f"{_variant(arch, skip)}\nstratified: " + ", ".join(titles), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"Kendall τ, accuracy vs {LABELS.get(metric, metric)}")
    handles = [Line2D([], [], color=color, marker=marker, label=label) for label, (_, color, marker) in series.items()]
    handles += [Line2D([], [], color="0.3", marker="o", ls="none", label=f"filled: p < {alpha:g}"),
                Line2D([], [], color="0.3", marker="o", ls="none", markerfacecolor="white",
                       label=f"hollow: p ≥ {alpha:g}")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles) if panels > 1 else 2, frameon=False,
               fontsize=8.5, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"Does {LABELS.get(metric, metric)} rank methods beyond layer-wise density?"
                 + (f" ({dataset})" if dataset else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0.07 if panels > 1 else 0.13, 1, 1))
    return fig


def own_vs_published(table: pd.DataFrame, quantities=("delta_r_norm", "imdb_norm", "narc", "mu_hat")) -> plt.Figure:
    """The workbook's value of each cell against the authors' mean, one panel per quantity,
    from :func:`lib.reproduction.compare`: bars are the 95% prediction interval of one more
    seed of theirs (:func:`lib.reproduction.half_width`); on the diagonal = reproduced."""
    from .reproduction import half_width

    t = table[table["quantity"].isin(quantities) & table["own"].notna() & table["published_mean"].notna()]
    colors = palette(t["method"].unique())
    markers = {"resnet34": "o", "vgg16": "s"}
    fig, axes = plt.subplots(1, len(quantities), figsize=(3.9 * len(quantities), 3.9), squeeze=False)
    for ax, q in zip(axes[0], quantities):
        sub = t[t["quantity"] == q]
        for r in sub.itertuples():
            err = half_width(r.published_sd, int(r.published_seeds), int(r.own_seeds))
            ax.errorbar(r.published_mean, r.own, xerr=err, fmt=markers.get(r.arch, "^"), color=colors[r.method],
                        ms=4.5, mfc="white" if r.verdict == "outside" else colors[r.method], elinewidth=0.8)
        if len(sub):
            lo = min(sub["published_mean"].min(), sub["own"].min())
            hi = max(sub["published_mean"].max(), sub["own"].max())
            ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, zorder=0)
        ax.set(xlabel=f"published mean ({LABELS.get(q, q)})", ylabel=f"this workbook ({LABELS.get(q, q)})")
        ax.set_title(LABELS.get(q, q), fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", ls="none", label=m) for m, c in colors.items()]
    handles += [Line2D([], [], color="0.3", marker=mk, ls="none", label=_variant(a, True)) for a, mk in markers.items()]
    handles += [Line2D([], [], color="0.3", marker="o", ls="none", mfc="white", label="outside the seed spread")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8.5,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("Own masks against the published record (same settings, full size)", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
