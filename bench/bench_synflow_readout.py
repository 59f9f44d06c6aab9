"""SynFlow scored in float64 against float32 (the authors' dtype, and lib.pruning's): per-layer densities.

The authors' published SynFlow masks were scored with R = sum(log_softmax(f(1))) in float32
(shared/spec/experiments.md). lib.pruning scores in float32 too, and in float64 only where
float32 overflows (products of |w| along deep paths can). This prints, per layer, the density
of the two masks, their overlap, and whether the float32 scoring stayed finite: what scoring
in float64 would change. Full-size model, 100 rounds, one thread.

    .venv/bin/python bench/bench_synflow_readout.py --arch resnet34 --densities 0.01 0.1
"""
from __future__ import annotations

import argparse
import time

import torch

from lib import pruning
from lib.models import build_model


def synflow_masks(model, density: float, rounds: int, readout: str, dtype: torch.dtype):
    """Masks of SynFlow in ``dtype`` (lib.pruning's scorer, only the dtype changed), or the error."""
    with pruning._scoring_view(model):
        try:
            scores = pruning._score_synflow(model, density, None, torch.device("cpu"), rounds, False, None, readout, dtype)
        except FloatingPointError as err:
            return None, str(err)
    return pruning.global_mask(scores, density), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet34")
    ap.add_argument("--densities", nargs="+", type=float, default=[0.01, 0.1])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--readout", default="log_softmax", choices=pruning.SYNFLOW_READOUTS)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.arch} seed {args.seed}, readout {args.readout}, {args.rounds} rounds")
    for density in args.densities:
        model = build_model(args.arch, seed=args.seed)
        start = time.perf_counter()
        m64, _ = synflow_masks(model, density, args.rounds, args.readout, torch.float64)
        t64 = time.perf_counter() - start
        start = time.perf_counter()
        m32, err = synflow_masks(model, density, args.rounds, args.readout, torch.float32)
        t32 = time.perf_counter() - start
        print(f"\ndensity {density}: float64 {t64:.0f} s, float32 {t32:.0f} s")
        if m32 is None:
            print(f"float32 failed: {err}")
            continue
        print(f"{'layer':<24} {'weights':>9} {'float64':>8} {'float32':>8} {'both kept / float64 kept':>26}")
        for name in m64:
            a, b = m64[name], m32[name]
            n64, n32, both = int(a.sum()), int(b.sum()), int((a & b).sum())
            share = f"{both / n64:.4f}" if n64 else "-"
            print(f"{name:<24} {a.numel():>9} {n64 / a.numel():8.4f} {n32 / b.numel():8.4f} {share:>26}")
        kept = sum(int(v.sum()) for v in m64.values())
        both = sum(int((m64[k] & m32[k]).sum()) for k in m64)
        diff = max(abs(int(m64[k].sum()) - int(m32[k].sum())) / m64[k].numel() for k in m64)
        print(f"overall: {both} of {kept} kept weights kept by both ({both / kept:.4%}); largest per-layer density difference {diff:.5f}")


if __name__ == "__main__":
    main()
