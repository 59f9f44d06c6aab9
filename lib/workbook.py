"""The units of work of a grid, and the tidy tables gathered from them.

A grid (:class:`lib.settings.Grid`) comes in units, each kept in the run folder
(:mod:`lib.store`) and skipped when done:

* a **mask** per (architecture, skip, method, density, seed, width) -- :func:`ensure_mask`;
  density-free scores (:data:`lib.pruning.METHODS`) are computed once per seed and cached;
* a **training run** per mask at ``train_width`` -- :func:`ensure_trained` (:mod:`lib.train`);
* **metrics** per mask at ``metric_width`` -- :func:`ensure_metrics` (:mod:`lib.spectral`);
* **controls** per measured mask: the metrics of ``control_draws`` random masks with exactly
  its per-layer kept counts -- :func:`ensure_controls` (:mod:`lib.controls`).

Notebooks 01-03 call :func:`prune_density`, :func:`train_density` and :func:`metrics_density`
for one density each; :func:`collect` gathers every unit of the grid into tidy tables (one row
per layer, mask or run, keyed by :data:`lib.settings.KEYS`) for ``04_figures``.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import torch

from . import store
from .controls import layer_counts, mask_controls
from .data import DATASET_SHAPES, load_data, scoring_batches
from .files import read_json, read_table, save_torch, write_json, write_table
from .models import build_model
from .progress import bar
from .pruning import apply_masks, compute_masks, layer_densities, load_masks, method_of, save_masks, score
from .settings import KEYS, ControlSet, Grid, PruneSettings, TrainRun, settings_dict
from .spectral import model_metrics, summarize
from .train import train

# Stages of a density: the notebook that runs each, and the units it leaves.
STAGES = ("01_pruning", "02_training", "03_spectral")


# ------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=1)  # one dataset at a time: CIFAR splits are hundreds of MB
def _splits(dataset: str, seed: int, root: Path, val_fraction: float, train_fraction: float,
            test_fraction: float, val_split: str):
    return load_data(dataset, root=root, val_fraction=val_fraction, seed=seed,
                     train_fraction=train_fraction, test_fraction=test_fraction, val_split=val_split)


def splits_for(grid: Grid, seed: int):
    """The grid's dataset split for ``seed``, loaded once per process while it is asked for."""
    return _splits(grid.dataset, seed, grid.data_root, grid.val_fraction, grid.train_fraction,
                   grid.test_fraction, grid.val_split)


def build(s: PruneSettings, meta: bool = False):
    """The model of a mask's settings, initialised from its seed (or on the meta device)."""
    num_classes, in_channels = DATASET_SHAPES[s.dataset]
    return build_model(s.arch, num_classes=num_classes, in_channels=in_channels, skip=s.skip,
                       width=s.width, seed=s.seed, meta=meta)


def keyed(df: pd.DataFrame, key: dict) -> pd.DataFrame:
    """Prefix a per-layer or per-epoch table with its unit's key columns."""
    return pd.concat([pd.DataFrame([key] * len(df)), df.reset_index(drop=True)], axis=1)


# ------------------------------------------------------------------------------ masks
def _method_options(s: PruneSettings) -> dict:
    """The settings a method is given: those of its options (:data:`lib.pruning.METHODS`)."""
    offered = {"rounds": s.rounds, "progress": False, "input_shape": (DATASET_SHAPES[s.dataset][1], 32, 32),
               "readout": s.synflow_readout, "temperature": s.grasp_temperature}
    return {k: v for k, v in offered.items() if k in method_of(s.method).options}


def _cached_scores(root: Path, s: PruneSettings, model, batches) -> dict:
    """Density-free scores, computed once per (model, method, seed) and kept on disk."""
    path = store.scores_file(root, s)
    if path.exists():
        return torch.load(path)
    scores = score(model, s.method, batches=batches, seed=s.seed, **_method_options(s))
    save_torch(scores, path)
    return scores


def ensure_mask(grid: Grid, s: PruneSettings) -> Path:
    """Draw and save the mask of ``s`` unless it is done; return its folder."""
    folder = store.mask_dir(grid.root, s)
    if store.is_done(grid.root, "mask", s):
        return folder
    method = method_of(s.method)
    cached = method.density_free and method.cache_scores and method.scorer is not None
    have_scores = cached and store.scores_file(grid.root, s).exists()
    # Only scoring reads the initial weights; shapes (a meta-device model) suffice otherwise,
    # and initialising a full-size VGG-16 costs over half a second of random draws. Only
    # methods that score on data read the dataset: the others need no CIFAR on disk.
    model = build(s, meta=not (method.needs_weights and not have_scores))
    batches = None
    if method.needs_data and not have_scores:
        batches = scoring_batches(splits_for(grid, s.seed), s.scoring_batches, s.scoring_batch_size,
                                  s.seed, augment=s.scoring_augment)
    options = _method_options(s)
    # The masks are saved, not applied: each consumer (training, metrics) applies or reads them.
    if cached:
        masks = compute_masks(model, s.method, s.density, scores=_cached_scores(grid.root, s, model, batches))
    else:
        masks = compute_masks(model, s.method, s.density, batches=batches, seed=s.seed, **options)
    dens = layer_densities(masks)
    table = pd.DataFrame({"layer": list(dens), "density": list(dens.values())})
    write_table(keyed(table, s.key()), folder / store.LAYER_DENSITIES)
    write_json(folder / store.SETTINGS, settings_dict(s))
    save_masks(folder / store.MASKS, masks)  # last: its presence marks the unit done
    return folder


def prune_density(grid: Grid, density: float, progress: bool = True) -> pd.DataFrame:
    """Draw every mask of ``density`` (metric width and train width); one row per mask."""
    units = grid.metric_masks(density)
    if grid.train_width != grid.metric_width:
        units += grid.train_masks(density)
    rows = []
    for s in bar(units, enabled=progress, desc=f"masks d={density:g}"):
        folder = ensure_mask(grid, s)
        dens = read_table(folder / store.LAYER_DENSITIES)
        empty = dens.loc[dens["density"] == 0, "layer"].tolist()
        rows.append({**s.key(), "layers": len(dens), "empty_layers": " ".join(empty),
                     "folder": str(folder.relative_to(grid.root))})
    return pd.DataFrame(rows)


def layer_density_table(grid: Grid, density: float) -> pd.DataFrame:
    """Per-layer densities of the metric-width masks of ``density`` (one row per layer)."""
    frames = [read_table(ensure_mask(grid, s) / store.LAYER_DENSITIES) for s in grid.metric_masks(density)]
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------ training
def ensure_trained(grid: Grid, run: TrainRun, progress: bool = True) -> dict:
    """Train one unit unless finished (a killed run resumes from its checkpoint)."""
    s = run.prune
    splits = splits_for(grid, s.seed)
    mask_folder = ensure_mask(grid, s)
    model = build(s)
    apply_masks(model, load_masks(mask_folder / store.MASKS, model))
    folder = store.train_dir(grid.root, run)
    write_json(folder / store.SETTINGS, settings_dict(run))
    return train(model, splits, run.train, folder, seed=s.seed, progress=progress)


def run_row(run: TrainRun, result: dict) -> dict:
    """One row of the ``runs`` table: the mask's keys, the run's status and accuracies."""
    keep = ("status", "test_acc", "val_acc", "best_epoch", "epochs_run", "diverged_epoch")
    return {**run.prune.key(), **{k: result.get(k) for k in keep},
            "empty_layers": " ".join(result.get("empty_layers") or [])}


def train_density(grid: Grid, density: float, progress: bool = True) -> pd.DataFrame:
    """Train every mask of ``density``; one row per run (keys, status, accuracies)."""
    runs = grid.train_runs(density)
    return pd.DataFrame([run_row(run, ensure_trained(grid, run, progress=progress))
                         for run in bar(runs, enabled=progress, desc=f"training d={density:g}")])


def histories(grid: Grid, density: float | None = None) -> pd.DataFrame:
    """Learning curves of the grid's runs that have started: one row per (run, epoch)."""
    densities = grid.densities if density is None else (density,)
    frames = []
    for d in densities:
        for run in grid.train_runs(d):
            path = store.train_dir(grid.root, run) / store.HISTORY
            if path.exists():
                frames.append(keyed(read_table(path), run.prune.key()))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------------------ metrics
def ensure_metrics(grid: Grid, s: PruneSettings) -> pd.DataFrame:
    """Per-layer graph metrics of one mask (computed once, then read back)."""
    folder = ensure_mask(grid, s)
    path = folder / store.LAYER_METRICS
    if path.exists():
        return read_table(path)
    table = keyed(model_metrics(load_masks(folder / store.MASKS)), s.key())
    write_table(table, path)
    return table


def metrics_density(grid: Grid, density: float, progress: bool = True) -> pd.DataFrame:
    """Per-layer metrics of every metric-width mask of ``density`` (one row per layer), and
    of their density-matched controls (:func:`controls_density`)."""
    units = bar(grid.metric_masks(density), enabled=progress, desc=f"metrics d={density:g}")
    layers = pd.concat([ensure_metrics(grid, s) for s in units], ignore_index=True)
    controls_density(grid, density, progress=progress)
    return layers


def ensure_controls(grid: Grid, c: ControlSet) -> pd.DataFrame:
    """The metrics of a mask's density-matched controls (computed once, then read back)."""
    path = store.controls_file(grid.root, c)
    if path.exists():
        return read_table(path)
    layers = ensure_metrics(grid, c.prune)
    table = mask_controls(c.prune.key(), layer_counts(layers), draws=c.draws)
    write_table(table, path)
    return table


def controls_density(grid: Grid, density: float, progress: bool = True) -> pd.DataFrame:
    """Controls of every metric-width mask of ``density`` (one row per control layer)."""
    units = bar(grid.control_sets(density), enabled=progress, desc=f"controls d={density:g}")
    frames = [ensure_controls(grid, c) for c in units]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------------------ stages
def stage_units(grid: Grid, density: float, stage: str) -> list[tuple[str, PruneSettings | TrainRun]]:
    """The units (kind, settings) that notebook ``stage`` leaves for ``density``."""
    if stage == "01_pruning":
        return [("mask", s) for s in grid.metric_masks(density) + grid.train_masks(density)]
    if stage == "02_training":
        return [("training", r) for r in grid.train_runs(density)]
    if stage == "03_spectral":
        return [("metrics", s) for s in grid.metric_masks(density)] + [("controls", c) for c in grid.control_sets(density)]
    raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")


def stage_done(grid: Grid, density: float, stage: str) -> bool:
    """Whether every unit of ``stage`` for ``density`` is done."""
    return all(store.is_done(grid.root, kind, s) for kind, s in stage_units(grid, density, stage))


STAGE_FUNCTIONS = {"01_pruning": prune_density, "02_training": train_density, "03_spectral": metrics_density}


# ------------------------------------------------------------------------------ tables
def mask_summaries(layers: pd.DataFrame, by: list[str] = KEYS) -> pd.DataFrame:
    """One row per mask (per group of ``by``): its keys and the model-level aggregates of its
    per-layer metrics (:func:`lib.spectral.summarize`)."""
    rows = [{**dict(zip(by, k)), **summarize(g).to_dict()} for k, g in layers.groupby(by, sort=False)]
    return pd.DataFrame(rows)


def join_results(runs: pd.DataFrame, masks: pd.DataFrame) -> pd.DataFrame:
    """``runs`` joined with ``masks`` on every key, width included: a row holds the accuracy
    and the metrics of one and the same mask. Where a grid trains one width and measures
    another, accuracies and metrics stay on separate rows (nothing correlates them)."""
    if not (len(masks) or len(runs)):
        return pd.DataFrame()
    if not len(runs):
        return masks
    if not len(masks):
        return runs
    return runs.merge(masks, on=KEYS, how="outer", suffixes=("", "_mask"))


def collect(grid: Grid) -> dict[str, pd.DataFrame]:
    """The grid's finished units, over all its densities, as tidy tables.

    ``layers``: one row per (mask, layer) with the graph metrics; ``masks``: one row per
    measured mask (:func:`mask_summaries`); ``runs``: one row per training run; ``results``:
    ``runs`` joined with ``masks`` (:func:`join_results`); ``controls``: one row per layer of
    each mask's density-matched controls; ``missing``: the units not finished yet. Units are
    found from the grid's settings, so folders of other settings in the same ``runs_dir`` are
    never mixed in.
    """
    layer_frames, control_frames, run_rows, missing = [], [], [], []
    for density in grid.densities:
        for c in grid.control_sets(density):
            path = store.unit_file(grid.root, "controls", c)
            if path.exists():
                control_frames.append(read_table(path))
            else:
                missing.append({**c.prune.key(), "unit": "controls", "folder": str(path.parent)})
        for s in grid.metric_masks(density):
            path = store.unit_file(grid.root, "metrics", s)
            if path.exists():
                layer_frames.append(read_table(path))
            else:
                missing.append({**s.key(), "unit": "metrics", "folder": str(path.parent)})
        for run in grid.train_runs(density):
            path = store.unit_file(grid.root, "training", run)
            if path.exists():
                run_rows.append(run_row(run, read_json(path)))
            else:
                missing.append({**run.prune.key(), "unit": "training", "folder": str(path.parent)})
    layers = pd.concat(layer_frames, ignore_index=True) if layer_frames else pd.DataFrame()
    masks = mask_summaries(layers) if len(layers) else pd.DataFrame()
    runs = pd.DataFrame(run_rows)
    controls = pd.concat(control_frames, ignore_index=True) if control_frames else pd.DataFrame()
    return {"layers": layers, "masks": masks, "runs": runs, "results": join_results(runs, masks),
            "controls": controls, "missing": pd.DataFrame(missing)}


def write_tables(tables: dict[str, pd.DataFrame], folder: str | Path) -> dict[str, Path]:
    """Write each table as ``<folder>/<name>.csv`` (atomically, no index)."""
    folder = Path(folder)
    return {name: write_table(df, folder / f"{name}.csv") for name, df in tables.items()}


if __name__ == "__main__":  # ``python -m lib.workbook ...``: the older spelling of ``python -m lib``
    import runpy

    runpy.run_module("lib", run_name="__main__")
