"""Where things live on disk: the one module that builds paths.

A unit's folder name starts with its main settings (readable in a file browser) and ends
with the hash of *all* its settings (:func:`lib.settings.settings_hash`), so two units that
differ in any field never share a folder. Nothing reads settings back out of a folder name:
each folder holds a ``settings.json``, and tables carry their keys as columns.
"""
from __future__ import annotations

from pathlib import Path

from .settings import PruneSettings, TrainRun, settings_hash

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
RUNS = REPO / "runs"
FIGURES = REPO / "figures"


def _label(s: PruneSettings) -> str:
    variant = "" if s.skip else "-noskip"
    width = "" if s.width == 1.0 else f"-w{s.width:g}"
    return f"{s.arch}{variant}{width}-{s.dataset}-{s.method}-d{s.density:g}-s{s.seed}"


def mask_dir(root: Path | str, settings: PruneSettings) -> Path:
    """Folder of one mask: ``masks.pt``, ``settings.json``, ``layers.csv`` (metrics)."""
    return Path(root) / "masks" / f"{_label(settings)}-{settings_hash(settings)}"


def train_dir(root: Path | str, run: TrainRun) -> Path:
    """Folder of one training run: checkpoint, ``history.csv``, ``result.json``."""
    return Path(root) / "train" / f"{_label(run.prune)}-{settings_hash(run)}"


def scores_file(root: Path | str, settings: PruneSettings) -> Path:
    """Cached density-independent scores (``settings.density`` set to 1.0 by the caller)."""
    label = _label(settings).replace(f"-d{settings.density:g}", "")
    return Path(root) / "scores" / f"{label}-{settings_hash(settings)}.pt"
