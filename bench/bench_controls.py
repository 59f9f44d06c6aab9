"""Time density-matched controls (``lib.controls.mask_controls``) on full-size models.

One control draw of a mask = a random mask per layer with the mask's kept counts, then
``lib.spectral.model_metrics`` on it. Prints one row per (arch, density): seconds to draw the
random masks and seconds for the metrics, per draw, and the slowest layers. The counts are
those of an ERK mask of the density (any method's counts cost the same to draw and measure
within a few per cent: the spectral work depends on the layer shapes and the density). Run:

    .venv/bin/python bench/bench_controls.py                          # ResNet-34 and VGG-16 at 0.1
    .venv/bin/python bench/bench_controls.py --archs resnet34 --densities 0.01 0.4 --draws 2
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lib import controls
from lib.pruning import erk_densities
from lib.spectral import gemm_dtype, layer_metrics


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet34", "vgg16"])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--densities", nargs="+", type=float, default=[0.1])
    p.add_argument("--draws", type=int, default=1)
    p.add_argument("--slowest", type=int, default=3, help="list this many slowest layers per draw")
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, exact GEMM dtype: {gemm_dtype()}")
    print(f"{'arch':9} {'density':>7} {'draw':>4} {'draw s':>7} {'metrics s':>9}  slowest layers (s)")
    for arch in args.archs:
        sizes = controls.model_layer_sizes(arch, args.dataset)
        shapes = {name: (right, left) for name, (left, right) in sizes.items()}
        for density in args.densities:
            dens = erk_densities(shapes, density)
            counts = {n: (left, right, int(round(dens[n] * left * right))) for n, (left, right) in sizes.items()}
            keys = dict(arch=arch, skip=True, width=1.0, dataset=args.dataset, method="ERK", density=density, seed=1)
            for draw in range(args.draws):
                rng = np.random.default_rng(controls.control_seed(keys, draw))
                start = time.perf_counter()
                masks = {n: controls.random_layer_mask(l, r, k, rng) for n, (l, r, k) in counts.items()}
                drawn = time.perf_counter() - start
                per_layer = {}
                for name, mask in masks.items():  # what model_metrics does, timed per layer
                    start = time.perf_counter()
                    layer_metrics(mask)
                    per_layer[name] = time.perf_counter() - start
                slow = sorted(per_layer.items(), key=lambda kv: -kv[1])[:args.slowest]
                print(f"{arch:9} {density:7g} {draw:4d} {drawn:7.1f} {sum(per_layer.values()):9.1f}  "
                      + ", ".join(f"{n} {s:.1f}" for n, s in slow), flush=True)


if __name__ == "__main__":
    main()
