"""Which layers SynFlow scores without their weight gradient on this machine's CPU, and SynFlow's time on each device.

``lib.pruning`` scores a convolution to at most ``_WINDOW_TERMS`` output positions from its
output gradient and unfolded input only where the BLAS sums its weight gradient as the kernels
do (``_sums_as_fma``, checked per shape at run time). This prints, for the full-size models at
32x32, each such layer's shape and the check's answer on this CPU (another CPU or MKL build
may answer otherwise: the masks stay exact, the layer keeps its gradient), then SynFlow's wall
time (100 rounds, density 0.05) on the CPU (one thread) and, where there is one, on CUDA.

    .venv/bin/python bench/bench_synflow_device.py
"""
from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

from lib import pruning
from lib.models import build_model, prunable_layers


def checks(arch: str) -> list[tuple[str, int, bool]]:
    """(layer, output positions, whether the BLAS sums as the kernels) for each convolution to
    2..``_WINDOW_TERMS`` output positions at 32x32, batch 1, float32."""
    model, rows = build_model(arch, seed=1).eval(), []
    layers = prunable_layers(model)

    def hook(name):
        def record(m, inputs, out):
            terms = out.shape[-2:].numel()
            if isinstance(m, torch.nn.Conv2d) and 1 < terms <= pruning._WINDOW_TERMS:
                rows.append((name, terms, pruning._conv_sums_as_fma(m, inputs[0].shape, torch.float32)))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    with torch.no_grad():
        model(torch.ones(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["resnet34", "vgg16"])
    p.add_argument("--devices", nargs="*", default=["cpu", "cuda"], help="where to time SynFlow (none: only the checks)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", pruning.LayerCollapseWarning)
    print(f"torch {torch.__version__}, MKL {torch.backends.mkl.is_available()}, {platform.processor() or platform.machine()}")
    for arch in args.archs:
        rows = checks(arch)
        summed = [n for n, _, ok in rows if ok]
        print(f"{arch}: {len(summed)} of {len(rows)} convolutions to 2..{pruning._WINDOW_TERMS} outputs summed as the kernels"
              + (f"; not: {', '.join(n for n, _, ok in rows if not ok)}" if len(summed) < len(rows) else ""))
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            continue
        for arch in args.archs:
            model = build_model(arch, seed=1).to(device)
            pruning.compute_masks(model, "SynFlow", 0.05, rounds=2, progress=False)  # compiles, warms
            start = time.perf_counter()
            masks = pruning.compute_masks(model, "SynFlow", 0.05, rounds=100, progress=False)
            seconds = time.perf_counter() - start
            kept = sum(int(m.sum()) for m in masks.values())
            print(f"SynFlow {arch} on {device}: {seconds:.1f} s, {kept} kept", flush=True)


if __name__ == "__main__":
    main()
