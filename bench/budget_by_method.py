"""Test accuracy per pruning method as the training budget grows (quick-profile data).

Why this exists: in the quick profile (2 epochs) GraSP's masks sit near chance while the
other methods reach 0.5-0.6. This script trains the same masks for more epochs, so one can
see whether a method's masks are untrainable or only slow to start (the authors' own logs,
``csv_metric/density_0.4/cifar10/resnet34`` of the reference repository, show GraSP at 24%
after CIFAR-10's first epoch where ERK is at 48%; both end near 88%).

Each (method, epochs) cell prunes a freshly built model of the quick profile's training width
with the quick profile's scoring batches, then trains it with the quick profile's recipe
except ``epochs`` (the lr drops x0.1 at the last epoch). Masks come from
:func:`lib.pruning.prune`, training from :func:`lib.train.train`; run folders are temporary.

    .venv/bin/python bench/budget_by_method.py --epochs 2 10          # ResNet-34, density 0.4
    .venv/bin/python bench/budget_by_method.py --arch vgg16 --epochs 2 10 --methods ERK GraSP
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.data import scoring_batches  # noqa: E402
from lib.models import build_model  # noqa: E402
from lib.pruning import LayerCollapseWarning, prune  # noqa: E402
from lib.settings import Grid  # noqa: E402
from lib.train import train  # noqa: E402
from lib.workbook import splits_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", help="profile whose data, width and recipe are used")
    ap.add_argument("--arch", default="resnet34")
    ap.add_argument("--density", type=float, default=0.4)
    ap.add_argument("--methods", nargs="+", default=["ERK", "SNIP", "GraSP"])
    ap.add_argument("--epochs", nargs="+", type=int, default=[2, 10])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = Grid.from_profile(args.profile)
    seed = grid.seeds[0]
    splits = splits_for(grid, seed)
    batches = scoring_batches(splits, grid.scoring_batches, grid.scoring_batch_size, seed)
    rows = []
    cells = [(m, e) for m in args.methods for e in args.epochs]
    for method, epochs in tqdm(cells, desc="train"):
        model = build_model(args.arch, num_classes=splits.num_classes, in_channels=splits.in_channels,
                            width=grid.train_width, seed=seed)
        options = {"rounds": grid.rounds, "progress": False} if method == "SynFlow" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LayerCollapseWarning)
            prune(model, method, args.density, batches=batches, seed=seed, **options)
        settings = dataclasses.replace(grid.train_settings(), epochs=epochs,
                                       milestones=(max(1, epochs - 1), epochs))
        with tempfile.TemporaryDirectory() as run_dir:
            result = train(model, splits, settings, run_dir, seed=seed, progress=False)
        rows.append({"arch": args.arch, "width": grid.train_width, "density": args.density,
                     "method": method, "epochs": epochs, "test_acc": result["test_acc"]})
    table = pd.DataFrame(rows).pivot(index="method", columns="epochs", values="test_acc")
    table.columns = [f"{e} epochs" for e in table.columns]
    print(f"{args.arch} at width {grid.train_width}, density {args.density}, {grid.dataset} "
          f"({args.profile} profile's data and recipe), test accuracy:")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
