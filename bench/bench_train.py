"""Training throughput: the workbook's masked training step vs a bare PyTorch loop.

(a) "workbook": the code path of :func:`lib.train.train`: :func:`lib.data.batches`
    (augmentation and normalisation on the device) feeding :func:`lib.train.train_epoch`
    (:func:`lib.train.train_step`), on a model pruned at density 0.1 with Rand masks
    (``torch.nn.utils.prune``: ``weight = weight_orig * weight_mask`` before every forward).
(b) "bare": the same architecture and initial weights, no masks, pre-made input tensors,
    ``zero_grad / cross_entropy / backward / step`` written out here.

Both use SGD with the recipe's momentum and weight decay and read the loss back once per
step. Steps are interleaved one by one (a, b, b, a, a, b, ...) so drifts in machine load hit
both sides alike; images/s = batch / median step time (the median, because on a shared
machine a few steps can be slowed many times over by other processes). The table goes to
stdout and to ``bench/results/bench_train.csv``.

    python bench/bench_train.py                      # ResNet-34 and VGG-16, batch 256
    python bench/bench_train.py --batch 64 --steps 5 --warmup 3 --width 0.5
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib import data as D  # noqa: E402
from lib import train as T  # noqa: E402
from lib.files import write_table  # noqa: E402
from lib.pruning import overall_density  # noqa: E402
from lib.settings import TrainSettings  # noqa: E402


def build(arch: str, width: float) -> torch.nn.Module:
    from lib.models import build_model

    return build_model(arch, num_classes=10, in_channels=3, width=width, seed=0)


def apply_rand_masks(model: torch.nn.Module, density: float) -> str:
    try:
        from lib.pruning import prune
    except ImportError:  # lib.pruning not written yet: random masks by hand
        from torch.nn.utils import prune as torch_prune

        g = torch.Generator().manual_seed(0)
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                mask = torch.rand(m.weight.shape, generator=g) < density
                torch_prune.custom_from_mask(m, "weight", mask)
        return "custom_from_mask"
    prune(model, "Rand", density, seed=0)
    return "lib.pruning.prune(Rand)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_arch(arch: str, args, device: torch.device) -> dict:
    s = TrainSettings()
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    autocast = T._autocast(device, args.bf16)

    bare = build(arch, args.width)
    masked = copy.deepcopy(bare)
    how = apply_rand_masks(masked, args.density)
    models = {}
    for name, model in (("workbook", masked), ("bare", bare)):
        model.to(device=device, memory_format=fmt).train()
        opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum,
                              weight_decay=s.weight_decay)
        models[name] = (model, opt)

    # Synthetic 32x32 data: one batch of uint8 images on the device for the workbook path
    # (augmented and normalised every step, as in training), one float batch for bare.
    g = torch.Generator().manual_seed(0)
    images = D.ImageSet(torch.randint(0, 256, (args.batch, 3, 32, 32), generator=g,
                                      dtype=torch.uint8),
                        torch.randint(0, 10, (args.batch,), generator=g)).to(device)
    mean, std = D.CIFAR_MEAN, D.CIFAR_STD
    x_bare = torch.randn(args.batch, 3, 32, 32, generator=g).to(device).contiguous(memory_format=fmt)
    y_bare = images.labels.clone()

    def step_workbook():
        model, opt = models["workbook"]
        batch_iter = D.batches(images, args.batch, train=True, generator=g, device=device,
                               mean=mean, std=std, augment=True, memory_format=fmt)
        T.train_epoch(model, opt, batch_iter, autocast=autocast)  # one step, loss read back

    def step_bare():
        model, opt = models["bare"]
        with autocast:
            loss = F.cross_entropy(model(x_bare), y_bare)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    steps = {"workbook": step_workbook, "bare": step_bare}
    times = {"workbook": [], "bare": []}
    cpu_times = {"workbook": [], "bare": []}
    for i in range(args.warmup + args.steps):
        order = ("workbook", "bare") if i % 2 == 0 else ("bare", "workbook")
        for name in order:
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[name]()
            sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)

    ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
    # On the CPU, also images per CPU-second of this process: time spent descheduled by
    # other processes does not count, so it is the steadier measure on a shared machine.
    cpu_ips = {k: args.batch / statistics.median(v) for k, v in cpu_times.items()}
    dense = sum(m.weight_orig.numel() for m in masked.modules() if hasattr(m, "weight_orig"))
    return {
        "arch": arch, "width": args.width, "batch": args.batch, "device": str(device),
        "masks": how, "density": round(overall_density(T.applied_masks(masked)), 4), "masked_weights": dense,
        "timed_steps": args.steps,
        "bare_img_s": round(ips["bare"], 1),
        "workbook_img_s": round(ips["workbook"], 1),
        "ratio": round(ips["workbook"] / ips["bare"], 3),
        **({"bare_img_cpu_s": round(cpu_ips["bare"], 1),
            "workbook_img_cpu_s": round(cpu_ips["workbook"], 1),
            "cpu_ratio": round(cpu_ips["workbook"] / cpu_ips["bare"], 3)} if not cuda else {}),
        "bare_steps_s": " ".join(f"{t:.3f}" for t in times["bare"]),
        "workbook_steps_s": " ".join(f"{t:.3f}" for t in times["workbook"]),
    }


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["resnet34", "vgg16"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_train.csv"))
    args = p.parse_args(argv)

    device = T._resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(args.threads or os.cpu_count() or 1)  # as lib.train.train does
    rows = []
    for arch in args.archs:
        rows.append(bench_arch(arch, args, device))
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(f"torch {torch.__version__}, {device}, threads {torch.get_num_threads()}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per side, interleaved; "
          "img/s from the median step")
    cols = ["arch", "width", "batch", "bare_img_s", "workbook_img_s", "ratio"]
    cols += [c for c in ("bare_img_cpu_s", "workbook_img_cpu_s", "cpu_ratio") if c in table]
    print(table[cols].to_string(index=False))
    write_table(table, args.out)
    return table


if __name__ == "__main__":
    main()
