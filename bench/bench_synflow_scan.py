"""One SynFlow selection scan over a 25088 x 4096 Linear layer, against the memory's pace.

A SynFlow round scans every alive weight of a Linear layer scored by outer products (while
more than ``lib.pruning._LIST_BELOW`` of it is alive), collecting the alive scores below a
bracket. This times one scan of VGG-16's classifier shape on synthetic float32 data (90%
alive, inputs that do not repeat, so no sorted runs) with no hits and with ~3% hits (a round
drops ~3% of the alive weights): ``lib.kernels.scan_outer`` (flags a block branch-free, then
collects the hits; what SynFlow runs), ``lib.kernels.collect_outer`` (one branch a score; what
it ran before, still used for ties), a branch-free pass that only counts, and numpy's sum of
the weights. Prints a table:

    python bench/bench_synflow_scan.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numba
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lib

from lib import kernels  # noqa: E402

ROWS, COLS = 4096, 25088


@numba.njit(nogil=True)
def count_below(g, x, w, alive, hi):
    """Alive scores ``(g_i x_j) w_ij`` below ``hi``: the same reads, no stores, no branches."""
    c = 0
    for i in range(g.size):
        gi = g[i]
        base = i * x.size
        for j in range(x.size):
            c += alive[base + j] & ((gi * x[j]) * w[base + j] < hi)
    return c


def best_of(f, repeats=3) -> float:
    f()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    g, x = rng.random((ROWS, 1), dtype=np.float32), rng.random((1, COLS), dtype=np.float32)  # an outer product
    w = rng.random(ROWS * COLS, dtype=np.float32)
    alive = rng.random(ROWS * COLS) < 0.9
    cap = 1 << 18
    idx, val = np.empty(cap, np.int64), np.empty(cap, np.float32)
    alive8 = alive.view(np.uint8)
    bidx, bval = np.empty(1 << 23, np.int64), np.empty(1 << 23, np.float32)  # one call holds a round's hits
    big, low = np.float32(np.finfo(np.float32).max), np.float32(-np.inf)
    rows = []
    for label, hi in (("no hits", np.float32(-1.0)), ("~3% hits", np.float32(0.001))):
        def scan():
            start, hits = 0, 0
            while start < w.size:
                c, start, _ = kernels.collect_outer(g, x, w, alive, low, hi, start, big, idx, val)
                hits += c
            return hits

        def block_scan():
            start, c = 0, 0
            while start < w.size:
                c, start, _ = kernels.scan_outer(g, x, w, alive8, low, hi, big, start, bidx, bval, 0)
                hits[0] += c
            return c

        hits = [0]
        block_scan()
        rows.append({"pass": f"scan_outer, {label}", "hits %": 100 * hits[0] / w.size, "s": best_of(block_scan)})
        hits = scan()
        rows.append({"pass": f"collect_outer, {label}", "hits %": 100 * hits / w.size, "s": best_of(scan)})
        rows.append({"pass": f"branch-free count, {label}", "hits %": 100 * count_below(g[:, 0], x[0], w, alive, hi) / w.size,
                     "s": best_of(lambda: count_below(g[:, 0], x[0], w, alive, hi))})
    rows.append({"pass": "numpy sum of the weights", "hits %": float("nan"), "s": best_of(w.sum)})
    table = pd.DataFrame(rows)
    table["ns per weight"] = table["s"] / w.size * 1e9
    print(f"{ROWS} x {COLS} float32 weights, 90% alive, one thread, best of 3")
    print(table.round(3).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
