"""SynFlow's two readouts against the published masks: per-layer density differences.

The authors' published SynFlow masks were scored with R = sum(log_softmax(f(1))), the SynFlow
paper's with R = sum(f(1)) (shared/spec/experiments.md). For each architecture and density this
draws full-size CIFAR-10 SynFlow masks (100 rounds, the given seeds) with both readouts and
compares each layer's density, averaged over the seeds, with the authors' mean over theirs
(data/published, commit ec1d583): the worst and mean |difference| over layers, and how many
layers fall outside the 95% prediction interval of the authors' seed spread
(lib.reproduction.layer_differences). Writes the per-layer table with --out.

    .venv/bin/python scripts/synflow_readouts.py --archs resnet34 vgg16 --densities 0.01 0.1
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from lib import published
from lib.files import write_table
from lib.models import build_model
from lib.pruning import SYNFLOW_READOUTS, compute_masks, layer_densities
from lib.reproduction import allowed_outside, layer_differences


def own_layers(arch: str, density: float, seeds: list[int], readout: str, rounds: int) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        model = build_model(arch, num_classes=10, seed=seed)
        masks = compute_masks(model, "SynFlow", density, seed=seed, rounds=rounds, readout=readout,
                              input_shape=(3, 32, 32), progress=False)
        for layer, value in layer_densities(masks).items():
            rows.append({"dataset": "cifar10", "arch": arch, "method": "SynFlow", "density": density,
                         "seed": seed, "layer": layer, "layer_density": value})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet34", "vgg16"])
    ap.add_argument("--densities", nargs="+", type=float, default=[0.01, 0.1])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the per-layer table here (CSV)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    record = published.read_record()["layers"]
    record = record[(record.dataset == "cifar10") & (record.method == "SynFlow") & record.skip]
    tables = []
    print(f"{'arch':<9} {'density':>7} {'readout':<12} {'worst |d|':>9} {'mean |d|':>9} {'outside':>8} {'allowed':>7} {'seconds':>8}",
          flush=True)
    for arch in args.archs:
        for density in args.densities:
            for readout in SYNFLOW_READOUTS:
                start = time.perf_counter()
                own = own_layers(arch, density, args.seeds, readout, args.rounds)
                seconds = time.perf_counter() - start
                diff = layer_differences(own, record[(record.arch == arch) & (record.density == density)])
                diff.insert(0, "readout", readout)
                tables.append(diff)
                d = diff["difference"].abs()
                outside = int((diff["verdict"] == "outside").sum())
                print(f"{arch:<9} {density:7.2f} {readout:<12} {d.max():9.4f} {d.mean():9.4f} "
                      f"{outside:>4} / {len(diff):<3} {allowed_outside(len(diff)):7d} {seconds:8.1f}", flush=True)
    if args.out:
        write_table(pd.concat(tables, ignore_index=True), args.out)


if __name__ == "__main__":
    main()
