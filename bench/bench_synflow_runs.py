"""How much of VGG-16's classifier SynFlow's grouped scan walks, round by round.

``lib.kernels.scan_grouped`` reads one value per sorted run (a row's 49 weights that share an
input value) and walks a run only while its scores are below the round's bracket. This runs
SynFlow on full-size VGG-16 (density 0.05, 100 rounds, one thread) with the scan wrapped, and
prints every tenth round: the share of runs walked, of those whose start moved since their last
walk (a removal moved ``first`` without reading the new value, so ``wfirst`` is stale: walked
to catch up), the hits, and the hits per walked run.

    .venv/bin/python bench/bench_synflow_runs.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numba
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lib

from lib import kernels  # noqa: E402
from lib.models import build_model  # noqa: E402
from lib.pruning import compute_masks  # noqa: E402


@numba.njit
def walked_runs(g, xg, ws, first, wfirst, size, hi):
    """(runs the scan walks, of which whose ``wfirst`` is stale) for bracket ``hi``."""
    per_row, walked, stale = xg.size, 0, 0
    for b in range(first.size):
        i = b // per_row
        if (g[i] * xg[b - i * per_row]) * wfirst[b] < hi:
            walked += 1
            k = b * size + first[b]
            # a hole, the start moved, or the run emptied by removal
            stale += first[b] == size or ws[k] != ws[k] or ws[k] != wfirst[b]
    return walked, stale


def main() -> pd.DataFrame:
    torch.set_num_threads(1)
    scan, rows = kernels.scan_grouped, []

    def counted(g, xg, wmax, ws, perm, first, wfirst, size, lo, hi, big, start, idx, aux, val, c):
        if start == 0 and lo == -float("inf"):  # a round's main scan (not a tie's)
            walked, stale = walked_runs(g, xg, ws, first, wfirst, size, hi)
        out = scan(g, xg, wmax, ws, perm, first, wfirst, size, lo, hi, big, start, idx, aux, val, c)
        if start == 0 and lo == -float("inf"):
            rows.append({"runs walked %": 100 * walked / first.size, "start moved %": 100 * stale / first.size,
                         "hits": out[0] - c, "hits per walked run": (out[0] - c) / max(walked, 1)})
        return out

    kernels.scan_grouped = counted
    try:
        compute_masks(build_model("vgg16", seed=1), "SynFlow", 0.05, rounds=100, progress=False)
    finally:
        kernels.scan_grouped = scan
    table = pd.DataFrame(rows)
    table.index.name = "scan"
    print("VGG-16 classifier.0, 2,097,152 runs of 49; SynFlow density 0.05, 100 rounds")
    print(table.iloc[::10].round(2).to_string())
    return table


if __name__ == "__main__":
    main()
