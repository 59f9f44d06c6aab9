"""Wall time of ``lib.pruning.prune`` per method on the full-size models, against plain passes.

Each prune runs on a freshly built model (building is not timed) at density 0.05 with one
synthetic scoring batch of 32 images (3x32x32), on the CPU unless --device says otherwise.
The yardstick, measured in the same run before and after each architecture's methods: 100
plain forward+backward passes of the same network at batch 1 (float32, eval mode, cross-entropy,
gradients of every parameter, freed after each pass as a training step does). ``x plain`` is a
method's seconds over the faster of the two yardstick runs; ``cpu s`` is the process's CPU time
(user + system), steadier than wall time when other jobs share the cores. With --repeats N
every time is the best of N runs.

    .venv/bin/python bench/bench_pruning.py --threads 1                  # every method, both archs
    .venv/bin/python bench/bench_pruning.py --threads 1 --methods SynFlow --repeats 2
    .venv/bin/python bench/bench_pruning.py --threads 1 --methods SynFlow --archs vgg16 --profile
    .venv/bin/python bench/bench_pruning.py --threads 1 --phases        # SynFlow's wall time by phase

``--phases`` times SynFlow's phases by wall clock (wrapped functions; no profiler's per-call
cost, which inflates the many small Python calls of ResNet-34's forward).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import functools
import pstats
import time

import torch
import torch.nn.functional as F

from lib import kernels, pruning
from lib.models import build_model, prunable_layers
from lib.pruning import global_mask, prune

METHODS = ["Rand", "ERK", "SNIP", "GraSP", "SynFlow", "iterSNIP"]


def timed(fn):
    """(wall seconds, CPU seconds, result) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def best(runs: list[tuple]) -> tuple:
    """The run with the least wall time."""
    return min(runs, key=lambda run: run[0])


def method_options(method: str, rounds: int) -> dict:
    """``prune``'s options for ``method``: the iterative ones get ``rounds`` and no progress bar."""
    return {"rounds": rounds, "progress": False} if method in ("SynFlow", "iterSNIP") else {}


def plain_passes(arch: str, passes: int, device: str) -> tuple[float, float]:
    """(wall, CPU) seconds of ``passes`` forward+backward passes at batch 1."""
    model = build_model(arch, seed=1).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (1,), generator=gen).to(device)

    def run():
        for _ in range(passes):
            F.cross_entropy(model(x), y).backward()
            for p in model.parameters():
                p.grad = None
        if device != "cpu":
            torch.cuda.synchronize()

    wall, cpu, _ = timed(run)
    return wall, cpu


# SynFlow's phases, disjoint parts of a prune: (label, owner, attribute(s), parts of it alike).
PHASES = [
    ("forward passes (functional_call)", torch.func, "functional_call", []),
    ("backward passes (autograd.grad)", torch.autograd, "grad", []),
    ("selection (_Survivors.lowest)", pruning._Survivors, "lowest", [
        ("the classifier's runs: scans", kernels, "scan_grouped"),
        ("other layers' scans", kernels, ("scan_dense", "scan_outer", "scan_listed", "scan_csr"))]),
    ("removal (_Survivors.remove)", pruning._Survivors, "remove", [
        ("the classifier's runs: removal", kernels, "remove_grouped")]),
    ("layers' round set-up (_Survivors.layer)", pruning._Survivors, "layer", [
        ("the classifier's runs: building them", pruning._Groups, "__init__")]),
    ("flat copy of the weights (_Survivors.__init__)", pruning._Survivors, "__init__", []),
    ("applying the masks (apply_masks)", pruning, "apply_masks", []),
]


@contextlib.contextmanager
def wall_clocks(phases):
    """Wrap each phase's functions to add their wall time to a Counter (yielded), by label."""
    seconds, undo = collections.Counter(), []
    for label, owner, names in phases:
        for name in [names] if isinstance(names, str) else names:
            fn = getattr(owner, name)

            def timed_fn(*args, _fn=fn, _label=label, **kw):
                t = time.perf_counter()
                try:
                    return _fn(*args, **kw)
                finally:
                    seconds[_label] += time.perf_counter() - t

            setattr(owner, name, timed_fn)
            undo.append((owner, name, fn))
    try:
        yield seconds
    finally:
        for owner, name, fn in undo:
            setattr(owner, name, fn)


def synflow_phases(arch: str, density: float, rounds: int, batch, device: str) -> None:
    """Print SynFlow's wall time on ``arch`` by phase (the second of two runs: numba warm)."""
    wrapped = [(label, owner, names) for label, owner, names, _ in PHASES]
    wrapped += [part for *_, parts in PHASES for part in parts]
    def run(model):
        return prune(model, "SynFlow", density, batches=[batch], seed=1, **method_options("SynFlow", rounds))

    for _ in range(2):
        model = build_model(arch, seed=1).to(device)  # not timed
        with wall_clocks(wrapped) as seconds:
            total, _, _ = timed(functools.partial(run, model))
    print(f"\nSynFlow {arch}: {total:.1f} s")
    for label, _, _, parts in PHASES:
        print(f"  {label:<52} {seconds[label]:6.2f}")
        for part, _, _ in parts:
            print(f"    {part:<50} {seconds[part]:6.2f}")
    print(f"  {'the rest':<52} {total - sum(seconds[label] for label, *_ in PHASES):6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet34", "vgg16"])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=100, help="SynFlow/iterSNIP rounds")
    ap.add_argument("--passes", type=int, default=100, help="plain forward+backward passes of the yardstick")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1, help="report the best of this many runs of everything")
    ap.add_argument("--profile", action="store_true", help="instead: a cProfile of each method's prune (no yardstick)")
    ap.add_argument("--phases", action="store_true", help="instead: SynFlow's wall time by phase (no yardstick)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(32, 3, 32, 32, generator=gen), torch.randint(0, 10, (32,), generator=gen))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, density {args.density}, rounds {args.rounds}")
    if args.phases:
        for arch in args.archs:
            synflow_phases(arch, args.density, args.rounds, batch, args.device)
        return
    if args.profile:
        for arch in args.archs:
            for method in args.methods:
                options = method_options(method, args.rounds)
                model = build_model(arch, seed=1).to(args.device)
                profile = cProfile.Profile()
                profile.runcall(prune, model, method, args.density, batches=[batch], seed=1, **options)
                print(f"\n{method} {arch}: the 25 calls with the most time of their own")
                pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    print(f"{'method':<12} {'arch':<9} {'seconds':>8} {'cpu s':>8} {'x plain':>8}  kept / N", flush=True)
    for arch in args.archs:
        before = best([plain_passes(arch, args.passes, args.device) for _ in range(args.repeats)])
        print(f"{f'{args.passes} passes':<12} {arch:<9} {before[0]:8.1f} {before[1]:8.1f} {'':>8}  (yardstick, before)", flush=True)
        rows = []
        for method in args.methods:
            options = method_options(method, args.rounds)
            runs = []
            for _ in range(args.repeats):
                model = build_model(arch, seed=1).to(args.device)
                n = sum(m.weight.numel() for m in prunable_layers(model).values())
                runs.append(timed(lambda: prune(model, method, args.density, batches=[batch], seed=1, **options)))
            wall, cpu, masks = best(runs)
            del runs
            kept = sum(int(m.sum()) for m in masks.values())
            rows.append((method, wall, cpu, kept, n))
            print(f"{method:<12} {arch:<9} {wall:8.1f} {cpu:8.1f} {wall / before[0]:8.2f}  {kept} / {n}", flush=True)
            del model, masks
        after = best([plain_passes(arch, args.passes, args.device) for _ in range(args.repeats)])
        plain = min(before[0], after[0])
        print(f"{f'{args.passes} passes':<12} {arch:<9} {after[0]:8.1f} {after[1]:8.1f} {'':>8}  (yardstick, after)")
        print(f"{'':<12} {arch:<9} x plain against the faster yardstick ({plain:.1f} s):")
        for method, wall, cpu, kept, n in rows:
            print(f"{method:<12} {arch:<9} {wall:8.1f} {cpu:8.1f} {wall / plain:8.2f}  {kept} / {n}", flush=True)
        if arch == "vgg16":
            model = build_model(arch, seed=1)
            scores = {k: torch.randn(m.weight.shape, generator=gen) for k, m in prunable_layers(model).items()}
            wall, cpu, _ = timed(lambda: global_mask(scores, args.density))
            print(f"{'global_mask':<12} {arch:<9} {wall:8.1f} {cpu:8.1f} {'':>8}  (random scores)", flush=True)


if __name__ == "__main__":
    main()
