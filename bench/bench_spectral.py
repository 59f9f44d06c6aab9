"""Time ``lib.spectral.model_metrics`` on full-size ResNet-34 and VGG-16 masks.

Prints one row per mask: seconds for all per-layer metrics and the peak memory the call added
to the process (from the kernel's high-water mark, reset before each call). Run:

    .venv/bin/python bench/bench_spectral.py                 # the table in the README
    .venv/bin/python bench/bench_spectral.py --archs resnet34 --densities 0.4 --profile

Targets on a 2-core machine: ResNet-34 mask <= 1 s at density 0.4, VGG-16 <= 5 s, <= 4 GB.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path

import torch

from lib.models import build_model
from lib.pruning import erk_masks, global_mask, score
from lib.spectral import model_metrics, summarize


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(masks) -> tuple[float, float]:
    """Seconds and peak added memory (GB) of one model_metrics call."""
    try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    df = model_metrics(masks)
    seconds = time.perf_counter() - start
    peak = max(_status_kb("VmHWM") - before, 0) / 2**20
    return seconds, peak, summarize(df)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet34", "vgg16"])
    p.add_argument("--methods", nargs="+", default=["Rand", "ERK", "SNIP"])
    p.add_argument("--densities", nargs="+", type=float, default=[0.01, 0.05, 0.1, 0.2, 0.4])
    p.add_argument("--repeats", type=int, default=1, help="report the fastest of this many calls")
    p.add_argument("--profile", action="store_true", help="print a cProfile of the slowest call")
    args = p.parse_args()
    torch.manual_seed(0)
    batch = [(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))]
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'arch':9} {'method':7} {'density':>7} {'seconds':>8} {'peak GB':>8} {'delta_r_norm':>12} {'imdb_norm':>9}")
    slowest = (0.0, None)
    for arch in args.archs:
        model = build_model(arch, seed=0)
        for method in args.methods:
            scores = None if method == "ERK" else score(model, method, batches=batch, seed=0)
            for density in args.densities:
                masks = erk_masks(model, density, seed=0) if method == "ERK" else global_mask(scores, density)
                runs = [measure(masks) for _ in range(args.repeats)]
                seconds, peak, s = min(runs, key=lambda r: r[0])
                if seconds > slowest[0]:
                    slowest = (seconds, masks)
                print(f"{arch:9} {method:7} {density:7.2f} {seconds:8.2f} {peak:8.2f} "
                      f"{s['delta_r_norm']:12.4f} {s['imdb_norm']:9.4f}", flush=True)
    if args.profile and slowest[1] is not None:
        prof = cProfile.Profile()
        prof.runcall(model_metrics, slowest[1])
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
