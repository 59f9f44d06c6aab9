"""SynFlow on full-size ResNet-34 with and without its 1x1-output convolutions scored by outer products.

ResNet-34's layer4 runs at 1x1 from a 32x32 input (62% of its weights); lib.pruning's
``_OuterTaps`` scores those convolutions from their output gradient and unfolded input, so
torch no longer computes their weight gradient each round. "before" restricts the outer
products to Linear layers (what lib.pruning did before), in the same process: the runs
alternate, so the host's pace (it moves by tens of % from minute to minute) hits both alike.
Both ways give the same masks (checked on every run). Prints each run's wall time by phase.

    .venv/bin/python bench/bench_synflow_outer.py --repeats 4
"""
from __future__ import annotations

import argparse
import collections
import time
import warnings

import torch
from bench_pruning import wall_clocks  # this folder: sys.path[0] when run as bench/bench_synflow_outer.py
from torch import nn

from lib import pruning
from lib.models import build_model

PHASES = (("forward", torch.func, "functional_call"), ("backward", torch.autograd, "grad"),
          ("selection", pruning._Survivors, "lowest"), ("removal", pruning._Survivors, "remove"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--repeats", type=int, default=4, help="runs of each way, alternating")
    p.add_argument("--width", type=float, default=1.0, help="model width (1: full size)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", pruning.LayerCollapseWarning)  # narrow models at low density collapse layers
    fits = pruning._OuterTaps._fits

    def linear_only(module, x, output):
        return isinstance(module, nn.Linear) and fits(module, x, output)

    ways = {"after": staticmethod(fits), "before": staticmethod(linear_only)}
    model = build_model("resnet34", width=args.width, seed=1)
    pruning.compute_masks(model, "SynFlow", args.density, rounds=2, progress=False)  # numba's compile, caches
    print(f"torch {torch.__version__}, 1 thread, ResNet-34 width {args.width}, density {args.density}, "
          f"{args.rounds} rounds; seconds")
    print(f"{'run':>3}  {'way':6} {'total':>6} " + " ".join(f"{n:>9}" for n, _, _ in PHASES))
    totals, first = collections.defaultdict(list), None
    for rep in range(args.repeats):
        for way in (("before", "after") if rep % 2 == 0 else ("after", "before")):
            pruning._OuterTaps._fits = ways[way]
            with wall_clocks(PHASES) as seconds:  # each phase's wall clock, summed over the rounds
                start = time.perf_counter()
                masks = pruning.compute_masks(model, "SynFlow", args.density, rounds=args.rounds, progress=False)
                total = time.perf_counter() - start
            totals[way].append(total)
            first = first or masks
            if not all(torch.equal(masks[n], first[n]) for n in first):
                raise SystemExit(f"the masks differ between the two ways (run {rep + 1}, {way})")
            print(f"{rep + 1:>3}  {way:6} {total:6.1f} " + " ".join(f"{seconds[n]:9.1f}" for n, _, _ in PHASES),
                  flush=True)
    pruning._OuterTaps._fits = ways["after"]
    mean = {way: sum(v) / len(v) for way, v in totals.items()}
    print(f"mean: before {mean['before']:.1f} s, after {mean['after']:.1f} s "
          f"({mean['after'] / mean['before']:.2f}x); best: before {min(totals['before']):.1f} s, "
          f"after {min(totals['after']):.1f} s; masks identical in every run")


if __name__ == "__main__":
    main()
