"""The project's folders, and atomic file writes: the primitives every module writes through.

A file is written to a temporary name in its folder and renamed into place (``os.replace`` is
atomic on POSIX), so a run killed mid-write leaves the old file or the new one, never half of
one. Tables are CSV without an index. Which file a unit of work writes, and where, is
:mod:`lib.store`'s business; this module only knows how.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
RUNS = REPO / "runs"
FIGURES = REPO / "figures"
PROFILES = REPO / "profiles"
NOTEBOOKS = REPO / "notebooks"


_UMASK = os.umask(0)
os.umask(_UMASK)


def in_repo(path: Path | str) -> Path:
    """``path`` as given if absolute, else relative to the repository (not the working directory)."""
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def atomic_write(path: Path | str, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the file the usual mode
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_json(path: Path | str, obj) -> Path:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")

    return atomic_write(path, write)


def read_json(path: Path | str):
    with open(path) as f:
        return json.load(f)


def write_table(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a tidy table as CSV, without the index, atomically."""
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def read_table(path: Path | str) -> pd.DataFrame:
    return pd.read_csv(path)


def save_torch(obj, path: Path | str) -> Path:
    """``torch.save`` through a temporary file, so a checkpoint is never half written."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
