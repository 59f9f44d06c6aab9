"""SynFlow on full-size ResNet-34 with its small-output convolutions scored from output gradients and unfolded inputs, or not.

ResNet-34's layer4 runs at 1x1 from a 32x32 input (62% of its weights), its layer3 at 2x2
(32%); lib.pruning's ``_OuterTaps`` scores such convolutions from their output gradient and
unfolded input, so torch no longer computes their weight gradient each round. The ways:
"linear" taps Linear layers only, "1x1" also convolutions to one output position, "2x2" also
those to up to 4 (``_WINDOW_TERMS``, what lib.pruning does). They run in the same process,
alternating, so the host's pace (it moves by tens of % from minute to minute) hits all alike.
All give the same masks (checked on every run). Prints each run's wall time by phase.

    .venv/bin/python bench/bench_synflow_outer.py --repeats 4             # 1x1 against 2x2
    .venv/bin/python bench/bench_synflow_outer.py --ways linear 1x1 2x2
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

WAYS = ("linear", "1x1", "2x2")
PHASES = (("forward", torch.func, "functional_call"), ("backward", torch.autograd, "grad"),
          ("selection", pruning._Survivors, "lowest"), ("removal", pruning._Survivors, "remove"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--repeats", type=int, default=4, help="runs of each way, alternating")
    p.add_argument("--width", type=float, default=1.0, help="model width (1: full size)")
    p.add_argument("--ways", nargs="+", choices=WAYS, default=["1x1", "2x2"], help="in this order, then reversed, ...")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", pruning.LayerCollapseWarning)  # narrow models at low density collapse layers
    fits, terms = pruning._OuterTaps._fits, pruning._WINDOW_TERMS

    def linear_only(module, x, output):
        return isinstance(module, nn.Linear) and fits(module, x, output)

    ways = {"linear": (staticmethod(linear_only), terms), "1x1": (staticmethod(fits), 1), "2x2": (staticmethod(fits), terms)}
    model = build_model("resnet34", width=args.width, seed=1)
    pruning.compute_masks(model, "SynFlow", args.density, rounds=2, progress=False)  # numba's compile, caches
    print(f"torch {torch.__version__}, 1 thread, ResNet-34 width {args.width}, density {args.density}, "
          f"{args.rounds} rounds; seconds")
    print(f"{'run':>3}  {'way':6} {'total':>6} " + " ".join(f"{n:>9}" for n, _, _ in PHASES))
    totals, first = collections.defaultdict(list), None
    for rep in range(args.repeats):
        for way in (args.ways if rep % 2 == 0 else args.ways[::-1]):
            pruning._OuterTaps._fits, pruning._WINDOW_TERMS = ways[way]
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
    pruning._OuterTaps._fits, pruning._WINDOW_TERMS = fits, terms
    base = sum(totals[args.ways[0]]) / args.repeats
    for way in args.ways:
        mean = sum(totals[way]) / args.repeats
        print(f"{way:6} mean {mean:5.1f} s ({mean / base:.2f}x {args.ways[0]}), best {min(totals[way]):5.1f} s")
    print("masks identical in every run")


if __name__ == "__main__":
    main()
