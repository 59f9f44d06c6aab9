"""Time ``lib.spectral.model_metrics`` on full-size ResNet-34 and VGG-16 masks, fast solver
against the exact one.

One row per mask (Rand, ERK, SNIP at each density): the fast solver's wall seconds (best of
``--repeats``), its target and whether it is met, its CPU seconds (all threads) and the peak
memory it added; with ``--exact`` also the exact solver's wall and CPU seconds (interleaved
with the fast runs, best of ``--exact-repeats``), the speed-up ratio and the largest
difference of any metric between the two. The machine is shared: compare ratios and CPU
seconds from one run, not wall seconds across runs. Run:

    python bench/bench_spectral.py --exact                 # the table in the README
    python bench/bench_spectral.py --exact --before 919ad01 --archs resnet34   # and the old code
    python bench/bench_spectral.py --archs resnet34 --densities 0.4 --profile

Targets on a 2-core machine: every ResNet-34 mask <= 0.5 s, every VGG-16 mask <= 3 s.
"""
from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lib, not another

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib.models import build_model  # noqa: E402
from lib.pruning import erk_masks, global_mask, score  # noqa: E402
from lib.spectral import METRICS, model_metrics, summarize  # noqa: E402

TARGET_SECONDS = {"resnet34": 0.5, "vgg16": 3.0}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def load_before(rev: str):
    """``lib/spectral.py`` as of git revision ``rev``, loaded as a module of package ``lib``."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:lib/spectral.py"],
                         capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("lib.spectral_before")
    module.__package__ = "lib"
    exec(compile(src, f"{rev}:lib/spectral.py", "exec"), module.__dict__)
    return module


def measure_before(module, masks):
    """Wall and CPU seconds of the older module's default ``model_metrics``."""
    start, cpu = time.perf_counter(), time.process_time()
    module.model_metrics(masks)
    return time.perf_counter() - start, time.process_time() - cpu


def measure(masks, solver: str, workers: int | None):
    """Wall seconds, peak added memory (GB), the table, and the CPU seconds of all the process's
    threads (less sensitive than wall time to other load on a shared machine) of one call."""
    try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = _status_kb("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    df = model_metrics(masks, solver=solver, workers=workers)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = max(_status_kb("VmHWM") - before, 0) / 2**20
    return seconds, peak, df, cpu


def max_rel_diff(fast, exact) -> float:
    """Largest ``|fast - exact| / max(|exact|, 1)`` over every metric of every layer (``inf``
    where one is NaN and the other not)."""
    worst = 0.0
    scale = np.maximum(np.abs(exact[list(METRICS)].to_numpy(dtype=float)), 1.0)
    a, b = fast[list(METRICS)].to_numpy(dtype=float), exact[list(METRICS)].to_numpy(dtype=float)
    if (np.isnan(a) != np.isnan(b)).any():
        return math.inf
    both = ~np.isnan(a)
    if both.any():
        worst = float(np.max(np.abs(a[both] - b[both]) / scale[both]))
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet34", "vgg16"])
    p.add_argument("--methods", nargs="+", default=["Rand", "ERK", "SNIP"])
    p.add_argument("--densities", nargs="+", type=float, default=[0.01, 0.05, 0.1, 0.2, 0.4])
    p.add_argument("--repeats", type=int, default=3, help="fast solver: report the fastest of this many calls")
    p.add_argument("--exact", action="store_true", help="also time the exact solver (the oracle) and compare")
    p.add_argument("--exact-repeats", type=int, default=1, help="exact solver: fastest of this many calls")
    p.add_argument("--workers", type=int, default=None, help="fast solver's workers (default: up to 2)")
    p.add_argument("--before", metavar="REV", help="also time lib/spectral.py as of this git "
                   "revision (919ad01: before the fast solver), once per mask")
    p.add_argument("--profile", action="store_true", help="print a cProfile of the slowest fast call")
    args = p.parse_args()
    before = load_before(args.before) if args.before else None
    torch.manual_seed(0)
    batch = [(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))]
    print(f"torch threads: {torch.get_num_threads()}; fast solver best of {args.repeats}"
          + (f", exact best of {args.exact_repeats}, interleaved" if args.exact else ""))
    head = f"{'arch':9} {'method':7} {'density':>7} {'fast s':>7} {'target':>6} {'met':>3} {'cpu s':>6} {'peak GB':>7}"
    if args.exact:
        head += f" {'exact s':>8} {'cpu s':>6} {'exact/fast':>10} {'max rel diff':>12}"
    if before is not None:
        head += f" {'before s':>8} {'cpu s':>6} {'before/fast':>11}"
    print(head + f" {'delta_r_norm':>12} {'imdb_norm':>9}")
    slowest, misses, ratios = (0.0, None), 0, []
    for arch in args.archs:
        model = build_model(arch, seed=0)
        for method in args.methods:
            scores = None if method == "ERK" else score(model, method, batches=batch, seed=0)
            for density in args.densities:
                masks = erk_masks(model, density, seed=0) if method == "ERK" else global_mask(scores, density)
                fast_runs, exact_runs, before_run = [], [], None
                for i in range(max(args.repeats, args.exact_repeats if args.exact else 0)):
                    if i < args.repeats:
                        fast_runs.append(measure(masks, "auto", args.workers))
                    if args.exact and i < args.exact_repeats:
                        exact_runs.append(measure(masks, "exact", None))
                    if before is not None and i == 0:
                        before_run = measure_before(before, masks)
                seconds, peak, df, cpu = min(fast_runs, key=lambda r: r[0])
                if seconds > slowest[0]:
                    slowest = (seconds, masks)
                target = TARGET_SECONDS.get(arch, math.inf)
                misses += seconds > target
                s = summarize(df)
                row = (f"{arch:9} {method:7} {density:7.2f} {seconds:7.2f} {target:6.1f} "
                       f"{'yes' if seconds <= target else 'no':>3} {cpu:6.2f} {peak:7.2f}")
                if args.exact:
                    exact_s, _, exact_df, exact_cpu = min(exact_runs, key=lambda r: r[0])
                    ratios.append(exact_s / seconds)
                    diff = max_rel_diff(df, exact_df)
                    row += f" {exact_s:8.2f} {exact_cpu:6.2f} {exact_s / seconds:10.1f} {diff:12.1e}"
                if before_run is not None:
                    row += f" {before_run[0]:8.2f} {before_run[1]:6.2f} {before_run[0] / seconds:11.1f}"
                print(row + f" {s['delta_r_norm']:12.4f} {s['imdb_norm']:9.4f}", flush=True)
    summary = f"masks over target: {misses}"
    if ratios:
        summary += f"; exact/fast ratio: median {np.median(ratios):.1f}, min {min(ratios):.1f}, max {max(ratios):.1f}"
    print(summary)
    if args.profile and slowest[1] is not None:
        prof = cProfile.Profile()
        prof.runcall(model_metrics, slowest[1], workers=args.workers)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
