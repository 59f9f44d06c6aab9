"""The run folder: where each unit of work keeps its files, what they are called, and whether
the unit is done.

Every unit has its own place under a grid's ``runs_dir``, named by its main settings (readable
in a file browser) and the hash of *all* its settings (:func:`lib.settings.settings_hash`), so
two units that differ in any field never share a folder. Nothing reads settings back out of a
name: folders hold a ``settings.json``, and tables carry their keys as columns.

=========  ============================================  =====================================
unit       where                                         done when it holds
=========  ============================================  =====================================
mask       ``masks/<label>-<hash>/``                     ``masks.pt`` (written last), beside
                                                         ``densities.csv``, ``settings.json``
metrics    the mask's folder                             ``layers.m<METRICS_VERSION>.csv``
controls   the mask's folder                             ``controls<draws>.m<METRICS_VERSION>.csv``
training   ``train/<label>-<hash>/``                     ``result.json`` (only a finished run
                                                         writes it), beside ``history.csv``,
                                                         ``checkpoint.pt``, ``settings.json``
scores     ``scores/<label without density>-<hash>.pt``  (a cache of density-free scores)
job        ``jobs/<label>-<hash>/``                      (its units: see :mod:`lib.scaleout`)
=========  ============================================  =====================================

The metrics file name carries :data:`lib.spectral.METRICS_VERSION`, so a change of the metric
code recomputes the metrics and nothing else. Files are written atomically (:mod:`lib.files`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .settings import ControlSet, PruneSettings, TrainRun, settings_hash
from .spectral import METRICS_VERSION

MASKS = "masks.pt"
LAYER_DENSITIES = "densities.csv"
LAYER_METRICS = f"layers.m{METRICS_VERSION}.csv"
SETTINGS = "settings.json"
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.csv"
RESULT = "result.json"
FINISHED = ("done", "diverged")  # result.json statuses of a run that is not trained again
JOB_STATE, JOB_SUBMISSION, JOB_LOG = "state.json", "submission.json", "job.log"
TABLES = "tables"
UNITS = ("mask", "metrics", "controls", "training")


def label(s: PruneSettings) -> str:
    """The readable part of a mask's or run's name: model, dataset, method, density, seed."""
    variant = "" if s.skip else "-noskip"
    width = "" if s.width == 1.0 else f"-w{s.width:g}"
    return f"{s.arch}{variant}{width}-{s.dataset}-{s.method}-d{s.density:g}-s{s.seed}"


def mask_dir(root: Path | str, s: PruneSettings) -> Path:
    """Folder of one mask: ``masks.pt``, ``densities.csv``, ``settings.json``, its metrics."""
    return Path(root) / "masks" / f"{label(s)}-{settings_hash(s)}"


def train_dir(root: Path | str, run: TrainRun) -> Path:
    """Folder of one training run: checkpoint, ``history.csv``, ``result.json``."""
    return Path(root) / "train" / f"{label(run.prune)}-{settings_hash(run)}"


def scores_file(root: Path | str, s: PruneSettings) -> Path:
    """The cached scores of a density-free method: one file for every density of ``s``."""
    free = dataclasses.replace(s, density=1.0)
    name = label(free).replace(f"-d{free.density:g}", "")
    return Path(root) / "scores" / f"{name}-{settings_hash(free)}.pt"


def tables_dir(root: Path | str) -> Path:
    """Where a grid's tidy tables are written (``<table>.csv``)."""
    return Path(root) / TABLES


def job_dir(root: Path | str, job_label: str, settings) -> Path:
    """Folder of one scale-out job: executed notebooks, ``job.log``, ``state.json``."""
    return Path(root) / "jobs" / f"{job_label}-{settings_hash(settings)}"


def submitit_dir(root: Path | str) -> Path:
    """submitit's own folder (pickled jobs, its stdout/stderr per job id)."""
    return Path(root) / "jobs" / "submitit"


def controls_file(root: Path | str, c: ControlSet) -> Path:
    """The metrics of a mask's density-matched controls (one row per control layer)."""
    return mask_dir(root, c.prune) / f"controls{c.draws}.m{METRICS_VERSION}.csv"


def unit_file(root: Path | str, unit: str, settings: PruneSettings | TrainRun | ControlSet) -> Path:
    """The file whose presence marks ``unit`` (``mask``, ``metrics``, ``controls``,
    ``training``) done."""
    if unit == "mask":
        return mask_dir(root, settings) / MASKS
    if unit == "metrics":
        return mask_dir(root, settings) / LAYER_METRICS
    if unit == "controls":
        return controls_file(root, settings)
    if unit == "training":
        return train_dir(root, settings) / RESULT
    raise ValueError(f"unknown unit {unit!r}; choose one of {', '.join(UNITS)}")


def is_done(root: Path | str, unit: str, settings: PruneSettings | TrainRun | ControlSet) -> bool:
    """Whether ``unit`` of ``settings`` is finished (from its files, never from a state file)."""
    return unit_file(root, unit, settings).exists()
