"""Wall time of ``lib.pruning.prune`` per method on the full-size models, and of ``global_mask``.

Each prune runs on a freshly built model (building is not timed) at density 0.05 with one
synthetic scoring batch of 32 images (3x32x32), on the CPU unless --device says otherwise.

    .venv/bin/python bench/bench_pruning.py                  # every method, both archs
    .venv/bin/python bench/bench_pruning.py --threads 1 --methods Rand SNIP --archs vgg16
"""
from __future__ import annotations

import argparse
import time

import torch

from lib.models import build_model, prunable_layers
from lib.pruning import global_mask, prune

METHODS = ["Rand", "ERK", "SNIP", "GraSP", "SynFlow", "iterSNIP"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet34", "vgg16"])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=100, help="SynFlow/iterSNIP rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(32, 3, 32, 32, generator=gen), torch.randint(0, 10, (32,), generator=gen))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, density {args.density}")
    print(f"{'method':<10} {'arch':<9} {'seconds':>8}  kept / N")
    for arch in args.archs:
        for method in args.methods:
            model = build_model(arch, seed=1).to(args.device)
            n = sum(m.weight.numel() for m in prunable_layers(model).values())
            options = {"rounds": args.rounds, "progress": False} if method in ("SynFlow", "iterSNIP") else {}
            start = time.perf_counter()
            masks = prune(model, method, args.density, batches=[batch], seed=1, **options)
            seconds = time.perf_counter() - start
            kept = sum(int(m.sum()) for m in masks.values())
            print(f"{method:<10} {arch:<9} {seconds:8.1f}  {kept} / {n}", flush=True)
            del model, masks
        if "vgg16" == arch:
            model = build_model(arch, seed=1)
            scores = {k: torch.randn(m.weight.shape, generator=gen) for k, m in prunable_layers(model).items()}
            start = time.perf_counter()
            global_mask(scores, args.density)
            print(f"{'global_mask':<10} {arch:<9} {time.perf_counter() - start:8.1f}  (random scores)", flush=True)


if __name__ == "__main__":
    main()
