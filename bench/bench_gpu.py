"""GPU training bench: throughput, memory and utilisation, correctness checks, concurrent runs.

One prepared script for a short turn on a lent GPU (an H100). Every part appends its rows to a
CSV in ``--out`` as soon as it has them (lib.files.write_table, atomic) and checks the time
left before ``--deadline`` (seconds from start) first, so a timeout still leaves data and a
task that would overrun is a row "skipped: deadline"; past the deadline plus ``--grace`` a
watchdog prints the summary and ends the run (exit status 3). In the order run:

1. ``env.csv``: torch, CUDA, cuDNN, the device (SMs, memory, driver, clocks, MIG), TF32 flags.
2. ``throughput.csv``: images/s of ResNet-34 and VGG-16 at batch 256, "masked" (the workbook's
   step: Rand masks at density 0.1 from lib.pruning, lib.data.batches with augmentation on the
   device, lib.train.train_epoch) and "bare" (bench_train.py's bare loop: no masks, one
   pre-made batch), fp32 and bf16, eager, each set up by ``lib.train._start`` as
   ``lib.train.train`` sets up a run (channels_last, cuDNN benchmark, data on the device).
   Timed in blocks of steps with one host sync per block, as train_epoch runs an epoch; peak
   memory after warm-up; GPU utilisation from ``nvidia-smi -lms 200`` while timing; the
   train-only time of the paper's epoch (44,800 images: 45,000 after the validation split, in
   full batches). Then ``lib.train.train`` itself, 2 epochs of masked ResNet-34 on 45,000
   synthetic images (fp32, bf16), evaluation and checkpoints included.
3. ``bench_train_gpu.csv``: bench/bench_train.py's columns from the fp32 eager rows (the
   paper profile trains in fp32, uncompiled), for ``python -m lib estimate --profile paper
   --bench bench_train_gpu.csv``.
4. ``checks.csv``: ``lib.train.train`` on small synthetic data (ResNet-34 width 0.25, density
   0.1, 2 epochs, fp32 and bf16; with lib.train's cuDNN settings, then again asking for
   deterministic kernels): the effective pruned weights are zero and the masks unchanged after
   training; a run stopped after epoch 1 (``stop_after``) and resumed by a fresh model against
   an uninterrupted run, judged against the difference between two uninterrupted runs.
5. ``concurrency.csv``: aggregate images/s of K = 1, 2, 4, 8 processes training the masked
   step at once on the one GPU (``--worker`` subprocesses that warm up, then train through
   the same time windows; images counted inside each window), against the in-process rate.
   ``bench_train_gpu_concurrent.csv`` when K runs at once beat one run by 5%: its
   ``workbook_img_s`` is the aggregate of ``concurrent_runs`` runs, because K runs progress
   at once, so the grid's GPU-hours are its images over the aggregate rate.
6. torch.compile of the masked (then bare) steps, each in a ``--worker`` subprocess (a compile
   that hangs is killed with its process group at the deadline; one that fails is a row with
   its error). ``--compile`` picks the configs and their order, and the mode:
   ``reduce-overhead`` replays CUDA graphs (fewer kernel launches from the host). The row counts
   the graphs compiled after the warm-up and after timing (more after timing: it recompiled
   while timed), the graph breaks and their most common reason, and CUDA-graph skips. Compiling takes a minute or more per model, so it alternates with the
   concurrency configs after the cheaper parts, rather than coming right after 2.

The last thing printed is a summary (the device tool returns only the tail of the output).
Workers write to a temporary folder, never to ``--out`` (at most 8 files come back: six CSVs
and the tee'd log.txt).

    PYTHONUNBUFFERED=1 python3 bench/bench_gpu.py --out $OUT --deadline 400 2>&1 | tee $OUT/log.txt
    python bench/bench_gpu.py --tiny --out /tmp/gpu_tiny --deadline 150   # CPU test: width 1/16, batch 32
    python bench/bench_gpu.py --tiny --out /tmp/t --skip compile concurrency  # tasks whose name has a word
    python3 bench/bench_gpu.py --out $OUT --skip bench_train epoch check concurrency \
        --compile resnet34/masked/fp32/reduce-overhead resnet34/masked/fp32/default  # eager + these compiles
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import gc
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

STARTED = time.monotonic()  # --deadline counts from here, before torch's import (seconds)

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # lib/ when run as bench/bench_gpu.py

from lib import data as D  # noqa: E402
from lib import train as T  # noqa: E402
from lib.files import read_json, write_json, write_table  # noqa: E402
from lib.models import build_model, prunable_layers  # noqa: E402
from lib.pruning import apply_masks, compute_masks, overall_density, prune  # noqa: E402
from lib.settings import TrainSettings  # noqa: E402
from lib.store import HISTORY  # noqa: E402

ARCHS = ("resnet34", "vgg16")
DENSITY = 0.1
VAL_FRACTION = 0.1
TRAIN_SPLIT = 45_000  # CIFAR's 50,000 less the paper profile's 10% validation split


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big everything is: the device run, or the CPU test (``--tiny``)."""

    width: float = 1.0
    batch: int = 256
    warmup_steps: int = 5
    block_steps: int = 25  # steps per timed block (one host sync each, as in an epoch)
    min_seconds: float = 2.0  # timed time per config: long enough for ~10 nvidia-smi samples
    epoch_images: int = TRAIN_SPLIT  # training images of the real train() run
    check_images: int = 2048
    check_width: float = 0.25
    conc_ks: tuple[int, ...] = (1, 2, 4, 8)
    conc_seconds: float = 5.0
    conc_block_steps: int = 5  # short blocks: one that straddles a window's end delays the next window
    # Seconds a task is expected to take: it is skipped when less than this is left.
    cost_eager: float = 12
    cost_epoch: float = 30
    cost_check: float = 15
    cost_conc: float = 50
    cost_compile: float = 75  # the least time worth starting a compile with (it gets all that is left)


FULL = Sizes()
TINY = Sizes(width=1 / 16, batch=32, warmup_steps=2, block_steps=4, min_seconds=0.5, epoch_images=640,
             check_images=256, check_width=1 / 16, conc_ks=(1, 2), conc_seconds=1.5, conc_block_steps=2, cost_eager=3,
             cost_epoch=8, cost_check=8, cost_conc=20, cost_compile=20)


def images_per_epoch(batch: int) -> int:
    """Training images per epoch at ``batch``: full batches of the 45,000 (as
    lib.scaleout.images_per_epoch, which cannot be imported here: it needs submitit)."""
    return TRAIN_SPLIT // batch * batch


def log(*parts) -> None:
    print(*parts, flush=True)


def precision(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


# ------------------------------------------------------------------------------ bookkeeping
class Budget:
    """Wall time left before ``--deadline`` (seconds from the script's start)."""

    def __init__(self, seconds: float, start: float = STARTED, reserve: float = 5.0):
        self.end = start + seconds - reserve  # the reserve: summary and clean-up

    def left(self) -> float:
        return self.end - time.monotonic()

    def fits(self, cost: float) -> bool:
        return self.left() >= cost


class Table:
    """Rows of one CSV in ``--out``, rewritten (atomically, lib.files) after every row."""

    def __init__(self, path: Path):
        self.path, self.rows = path, []

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        write_table(pd.DataFrame(self.rows), self.path)
        log(f"[{self.path.stem}] " + ", ".join(f"{k}={_short(v)}" for k, v in row.items()))
        return row

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."


def error_text(err: BaseException) -> str:
    """The exception's type and last lines, on one line (a CSV cell)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {' | '.join(lines[-3:])}"[:500]


class GpuSampler:
    """GPU utilisation (%) and memory used (MiB) from ``nvidia-smi -lms 200`` while open.

    One long-running nvidia-smi rather than one call per sample: its start-up (~0.1 s) would
    be the sampling interval. Without nvidia-smi (or on the CPU) the summary is NaN.
    """

    def __init__(self, smi_args: list[str] | None):
        self.smi_args, self.samples, self.proc, self.thread = smi_args, [], None, None

    def __enter__(self):
        if self.smi_args is not None:
            self.proc = subprocess.Popen(
                ["nvidia-smi", *self.smi_args, "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                util, mem = (float(v) for v in line.split(","))
                self.samples.append((util, mem))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.thread.join(timeout=2)

    def summary(self) -> dict:
        utils = [u for u, _ in self.samples]
        return {"gpu_util_mean": round(sum(utils) / len(utils), 1) if utils else math.nan,
                "gpu_util_samples": len(utils),
                "smi_mem_used_mib_max": max((m for _, m in self.samples), default=math.nan)}


def memory_stats(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"max_alloc_gib": math.nan, "max_reserved_gib": math.nan}
    return {"max_alloc_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "max_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}


def reset_memory(device: torch.device, release: bool = True) -> None:
    """Peak statistics from now on; ``release``: also hand cached blocks back (between
    configs; not before timing, where the first steps would pay for cudaMalloc again)."""
    if release:
        gc.collect()
    if device.type == "cuda":
        if release:
            torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------------------ the step
def base_model(arch: str, masked: bool, width: float) -> torch.nn.Module:
    """The paper's model on the CPU (seed 0), with Rand masks at density 0.1 if ``masked``
    (lib.pruning.prune = compute_masks + apply_masks)."""
    model = build_model(arch, num_classes=10, in_channels=3, width=width, seed=0)
    if masked:
        prune(model, "Rand", DENSITY, seed=0)
    return model


def synthetic_splits(train_images: int, **kw) -> D.Splits:
    """lib.data's synthetic images, sized so that the training split holds ``train_images``."""
    total = math.ceil(train_images / (1 - VAL_FRACTION))
    return D.load_data("synthetic", val_fraction=VAL_FRACTION, synthetic_size=(total, 3, 32, 32), **kw)


@dataclasses.dataclass
class Step:
    """One configuration's training step, set up by ``lib.train._start`` exactly as ``train()``
    sets up a run: model on the device (channels_last on CUDA), the recipe's SGD, cuDNN
    benchmark, bf16 autocast when asked; synthetic uint8 images on the device."""

    loop: T._Loop
    masked: bool

    @property
    def batch(self) -> int:
        return self.loop.settings.batch_size

    def block(self, steps: int) -> int:
        """Run ``steps`` steps and return the images trained on; ends with one host sync."""
        return self._workbook(steps) if self.masked else self._bare(steps)

    def _workbook(self, steps: int) -> int:
        # lib.train's epoch: lib.data.batches (shuffle, crop and flip on the device) feeding
        # train_epoch, which reads the loss back once, at the end.
        n, loop = steps * self.batch, self.loop
        part = D.ImageSet(loop.data.train.images[:n], loop.data.train.labels[:n])
        batch_iter = D.batches(part, self.batch, train=True, generator=loop.generator, device=loop.device,
                               mean=loop.data.mean, std=loop.data.std, augment=True,
                               memory_format=loop.memory_format, padding=loop.data.padding)
        return T.train_epoch(loop.model, loop.optimizer, batch_iter, autocast=loop.autocast)["images"]

    def _bare(self, steps: int) -> int:
        # bench_train.py's bare loop (no masks, one pre-made batch), reading the loss back once
        # per block like train_epoch rather than per step, so the two sides sync alike.
        x, y = self.fixed_batch
        model, opt = self.loop.model, self.loop.optimizer
        model.train()
        for _ in range(steps):
            with self.loop.autocast:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss.item()
        return steps * self.batch

    @functools.cached_property
    def fixed_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        loop = self.loop
        return next(D.batches(loop.data.train, self.batch, train=False, augment=False, device=loop.device,
                              mean=loop.data.mean, std=loop.data.std, memory_format=loop.memory_format))


def make_step(arch: str, *, masked: bool, bf16: bool, sizes: Sizes, device: torch.device,
              model: torch.nn.Module | None = None, compile_mode: str | None = None) -> Step:
    model = model if model is not None else base_model(arch, masked, sizes.width)
    splits = synthetic_splits(sizes.block_steps * sizes.batch)
    settings = TrainSettings(batch_size=sizes.batch, bf16=bf16)
    loop = T._start(model, splits, settings, seed=0, device=device, num_threads=None)
    if compile_mode is not None:  # "default", or "reduce-overhead": replayed CUDA graphs
        loop.model = torch.compile(loop.model, mode=compile_mode)
    return Step(loop, masked)


def run_until(step: Step, steps: int, stop_at: float) -> list[tuple[float, float, int]]:
    """Blocks of ``steps`` steps until wall time ``stop_at`` (time.time(): comparable across
    processes); (start, end, images) of each."""
    blocks = []
    while time.time() < stop_at:
        start = time.time()
        images = step.block(steps)
        blocks.append((start, time.time(), images))
    return blocks


def images_in_window(blocks, start: float, end: float) -> float:
    """Images trained inside [start, end]: a block that straddles an edge counts pro rata."""
    total = 0.0
    for t0, t1, images in blocks:
        overlap = min(t1, end) - max(t0, start)
        if overlap > 0:
            total += images * overlap / max(t1 - t0, 1e-9)
    return total


def measure(step: Step, sizes: Sizes, device: torch.device, smi_args) -> dict:
    """Warm up (cuDNN benchmark picks its kernels), then time blocks for ``min_seconds``."""
    start = time.time()
    step.block(sizes.warmup_steps)
    warmup_s = time.time() - start
    reset_memory(device, release=False)
    with GpuSampler(smi_args) as sampler:
        blocks = run_until(step, sizes.block_steps, time.time() + sizes.min_seconds)
    seconds = blocks[-1][1] - blocks[0][0]
    images = sum(b[2] for b in blocks)
    img_s = images / seconds
    return {"img_s": round(img_s, 1), "timed_steps": images // step.batch, "timed_s": round(seconds, 3),
            "epoch_train_s": round(images_per_epoch(step.batch) / img_s, 2), "warmup_s": round(warmup_s, 2),
            **memory_stats(device), **sampler.summary()}


# ------------------------------------------------------------------------------ context
@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    budget: Budget
    out: Path
    tmp: Path
    smi_args: list[str] | None  # nvidia-smi's device selection; None: no nvidia-smi
    tables: dict[str, Table] = dataclasses.field(default_factory=dict)
    procs: list[subprocess.Popen] = dataclasses.field(default_factory=list)  # live workers, for the watchdog
    skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def table(self, name: str) -> Table:
        if name not in self.tables:
            self.tables[name] = Table(self.out / f"{name}.csv")
        return self.tables[name]

    def row_base(self, arch: str, **extra) -> dict:
        return {"arch": arch, "width": self.sizes.width, "batch": self.sizes.batch, **extra}


# ------------------------------------------------------------------------------ 1. env
def _smi(args: list[str]) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def smi_selection(device: torch.device) -> list[str] | None:
    """nvidia-smi's ``-i`` for the torch device (by UUID: CUDA_VISIBLE_DEVICES renumbers), or
    no selection when the UUID is not understood; None without nvidia-smi or CUDA."""
    if device.type != "cuda" or shutil.which("nvidia-smi") is None:
        return None
    uuid = str(getattr(torch.cuda.get_device_properties(device), "uuid", ""))
    uuid = uuid if not uuid or uuid.startswith("GPU-") else f"GPU-{uuid}"  # nvidia-smi's spelling
    for args in ([f"--id={uuid}"] if uuid else [], []):
        if _smi([*args, "--query-gpu=name", "--format=csv,noheader"]):
            return args
    return None


def part_env(ctx: Context) -> None:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": sys.version.split()[0], "cpus": os.cpu_count(), "device": str(ctx.device),
            "tiny": ctx.args.tiny, "deadline_s": ctx.args.deadline,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(device_name=props.name, sm_count=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1))
        query = _smi([*(ctx.smi_args or []), "--query-gpu=driver_version,clocks.max.sm,power.limit,mig.mode.current",
                      "--format=csv,noheader"])
        if query:
            info["smi_driver_clock_power_mig"] = query.strip()
        full = _smi([])
        log(full if full else "nvidia-smi: not available")
    table = ctx.table("env")
    for key, value in info.items():
        table.add({"key": key, "value": value})


# ------------------------------------------------------------------------------ 2. throughput
def part_eager(ctx: Context) -> None:
    """Every eager config, both architectures first (cheap), compile configs come later."""
    table = ctx.table("throughput")
    for arch in ARCHS:
        for masked in (True, False):
            base, masks = None, None
            for bf16 in (False, True):
                row = ctx.row_base(arch, variant="masked" if masked else "bare", precision=precision(bf16),
                                   compile=False, mode="eager")
                if not ctx.budget.fits(ctx.sizes.cost_eager):
                    table.add({**row, "status": "skipped: deadline"})
                    continue
                try:
                    if base is None:  # weights and masks drawn once; each precision trains a copy
                        base = base_model(arch, False, ctx.sizes.width)
                        masks = compute_masks(base, "Rand", DENSITY, seed=0) if masked else None
                    model = copy.deepcopy(base)  # before the masks: a pruned model cannot be deep-copied
                    if masked:
                        apply_masks(model, masks)
                    step = make_step(arch, masked=masked, bf16=bf16, sizes=ctx.sizes, device=ctx.device, model=model)
                    if masked:
                        row["density"] = round(overall_density(T.applied_masks(step.loop.model)), 4)
                    row.update(measure(step, ctx.sizes, ctx.device, ctx.smi_args), status="ok",
                               bf16_used=bf16 and ctx.cuda)
                except Exception as err:  # a failed config is a row, not the end of the bench
                    row.update(status=error_text(err))
                    traceback.print_exc()
                table.add(row)
                step = None
                reset_memory(ctx.device)


def eager_img_s(ctx: Context, arch: str, variant: str, bf16: bool) -> float:
    rows = [r for r in ctx.table("throughput").rows
            if r["arch"] == arch and r.get("variant") == variant and r.get("precision") == precision(bf16)
            and r.get("compile") is False and r.get("status") == "ok"]
    return rows[-1]["img_s"] if rows else math.nan


def part_bench_train(ctx: Context) -> None:
    """bench_train.py's table from the fp32 eager rows: the paper profile trains in fp32
    (bf16: false), and the workbook does not compile. ``workbook_img_s`` is the step timed
    in blocks with one sync each, as train_epoch runs an epoch (bench_train.py syncs every
    step); ``bare_img_s`` is bench_train's bare loop, timed alike."""
    rows = []
    for arch in ARCHS:
        masked = [r for r in ctx.table("throughput").rows if r["arch"] == arch and r.get("variant") == "masked"
                  and r.get("precision") == "fp32" and r.get("compile") is False and r.get("status") == "ok"]
        if not masked:
            continue
        work, bare = masked[-1]["img_s"], eager_img_s(ctx, arch, "bare", False)
        rows.append({"arch": arch, "width": ctx.sizes.width, "batch": ctx.sizes.batch, "device": str(ctx.device),
                     "device_name": torch.cuda.get_device_name(ctx.device) if ctx.cuda else platform.processor(),
                     "masks": "lib.pruning.prune(Rand)", "density": masked[-1].get("density"),
                     "timed_steps": masked[-1]["timed_steps"], "bare_img_s": bare, "workbook_img_s": work,
                     "ratio": round(work / bare, 3), "bf16": False, "compile": False,
                     "timing": f"blocks of {ctx.sizes.block_steps} steps, one host sync per block"})
    if rows:
        write_table(pd.DataFrame(rows), ctx.out / "bench_train_gpu.csv")
        log(f"[bench_train_gpu] {len(rows)} rows")


def part_real_epoch(ctx: Context, bf16: bool, splits_cache: dict) -> None:
    """lib.train.train itself, 2 epochs on 45,000 synthetic images with the paper profile's
    split options (epoch 2: cuDNN's kernel search of epoch 1 done). ``epoch_seconds`` covers
    training and evaluation; ``wall_s`` adds model placement and the checkpoints."""
    table = ctx.table("throughput")
    row = ctx.row_base("resnet34", variant="masked", precision=precision(bf16), compile=False,
                       mode="train(), 2 epochs")
    if not ctx.budget.fits(ctx.sizes.cost_epoch):
        table.add({**row, "status": "skipped: deadline"})
        return
    try:
        # test_fraction 0.8: lib.data's synthetic test set is a quarter of the training file
        # (12,500 images here); 0.8 of it is CIFAR's 10,000.
        options = dict(val_split="last", test_fraction=0.8)
        if "splits" not in splits_cache:
            splits_cache["splits"] = synthetic_splits(ctx.sizes.epoch_images, **options)
        splits = splits_cache["splits"]
        settings = TrainSettings(epochs=2, batch_size=ctx.sizes.batch, bf16=bf16, val_fraction=VAL_FRACTION,
                                 val_augment=True, milestones=(125, 187), **options)
        run_dir = Path(tempfile.mkdtemp(prefix="epoch-", dir=ctx.tmp))
        reset_memory(ctx.device)
        start = time.time()
        with GpuSampler(ctx.smi_args) as sampler:
            result = T.train(base_model("resnet34", True, ctx.sizes.width), splits, settings, run_dir, seed=1,
                             device=ctx.device, progress=False)
        history = pd.read_csv(run_dir / HISTORY)
        epoch_s = history["epoch_seconds"].tolist()
        img_s = eager_img_s(ctx, "resnet34", "masked", bf16)
        trained = result["num_train"] // ctx.sizes.batch * ctx.sizes.batch  # full batches, as batches() yields
        row.update(status=result["status"], num_train=result["num_train"], num_val=result["num_val"],
                   num_test=result["num_test"], epoch1_s=round(epoch_s[0], 2), epoch2_s=round(epoch_s[-1], 2),
                   train_seconds=round(result["train_seconds"], 2), wall_s=round(time.time() - start, 2),
                   bf16_used=result["bf16_used"], train_loss=round(history["train_loss"].iloc[-1], 4),
                   epoch_train_s=round(trained / img_s, 2) if img_s == img_s else None,
                   **memory_stats(ctx.device), **sampler.summary())
        if row["epoch_train_s"] is not None:  # what the timed blocks do not see: mostly evaluation
            row["epoch2_minus_train_s"] = round(row["epoch2_s"] - row["epoch_train_s"], 2)
    except Exception as err:
        row.update(status=error_text(err))
        traceback.print_exc()
    table.add(row)
    reset_memory(ctx.device)


# ------------------------------------------------------------------------------ 3. checks
def state_diff(a: dict, b: dict) -> tuple[float, bool]:
    """Largest absolute difference over the float tensors of two state dicts, and whether
    every tensor (masks and counters included) is exactly equal."""
    worst, exact = 0.0, a.keys() == b.keys()
    for key in a.keys() & b.keys():
        x, y = a[key].detach().cpu(), b[key].detach().cpu()
        exact = exact and torch.equal(x, y)
        if x.is_floating_point():
            worst = max(worst, (x.double() - y.double()).abs().max().item() if x.numel() else 0.0)
    return worst, exact


def history_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    cols = ["train_loss", "train_acc", "val_acc", "test_acc", "lr"]
    if len(a) != len(b):
        return math.inf
    return float((a[cols] - b[cols]).abs().max().max())


def mask_report(model: torch.nn.Module, masks: dict, device: torch.device) -> dict:
    """Pruned weights after training: the effective weight (what the forward uses) must be 0
    there and the masks unchanged. ``weight_orig`` keeps the dense initial values under the
    mask (torch.nn.utils.prune), only shrunk by weight decay: counted, for information.
    Then the forward itself: noise added to pruned ``weight_orig`` entries must not change
    the eval output at all."""
    nonzero_effective = nonzero_orig = masks_changed = 0
    layers = {n: m for n, m in prunable_layers(model).items() if hasattr(m, "weight_mask")}
    with torch.no_grad():
        for name, module in layers.items():
            pruned = module.weight_mask == 0
            effective = module.weight_orig * module.weight_mask
            nonzero_effective += int((effective[pruned] != 0).sum()) + int((module.weight[pruned] != 0).sum())
            nonzero_orig += int((module.weight_orig[pruned] != 0).sum())
            masks_changed += int(((module.weight_mask.cpu() != 0) != masks[name]).sum())
        model.eval()
        x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
        x = x.contiguous(memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
        before = model(x).float()
        saved = {name: module.weight_orig.clone() for name, module in layers.items()}
        for name, module in layers.items():  # noise under the masks, in place, undone below
            noise = torch.randn(module.weight_orig.shape, generator=torch.Generator().manual_seed(1))
            module.weight_orig.add_(noise.to(module.weight_orig) * (module.weight_mask == 0))
        after = model(x).float()
        for name, module in layers.items():
            module.weight_orig.copy_(saved[name])
    return {"pruned_nonzero_effective": nonzero_effective, "masks_changed": masks_changed,
            "pruned_weight_orig_nonzero": nonzero_orig,
            "noise_under_mask_output_diff": float((before - after).abs().max())}


def part_check(ctx: Context, bf16: bool, deterministic: bool) -> None:
    table = ctx.table("checks")
    row = {"arch": "resnet34", "width": ctx.sizes.check_width, "batch": ctx.sizes.batch, "density": DENSITY,
           "precision": precision(bf16), "epochs": 2,
           "determinism": "use_deterministic_algorithms(warn_only) + cudnn.deterministic" if deterministic
           else "lib.train's: cudnn.benchmark=True, nothing else set"}
    if not ctx.budget.fits(ctx.sizes.cost_check):
        table.add({**row, "status": "skipped: deadline"})
        return
    # lib.train sets cudnn.benchmark and nothing else about determinism; the second variant
    # asks for deterministic kernels (warn_only: ops without one warn and are listed).
    old = torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.backends.cudnn.deterministic = deterministic
            torch.use_deterministic_algorithms(deterministic, warn_only=True)
            row.update(_check_runs(ctx, bf16))
        notes = sorted({str(w.message).splitlines()[0][:120] for w in caught
                        if "ignored on CPU" not in str(w.message)})
        row["warnings"] = " | ".join(notes)[:600]
    except Exception as err:
        row.update(status=error_text(err))
        traceback.print_exc()
    finally:
        torch.backends.cudnn.deterministic = old[0]
        torch.use_deterministic_algorithms(old[1], warn_only=old[2])
    table.add(row)
    reset_memory(ctx.device)


def _check_runs(ctx: Context, bf16: bool) -> dict:
    """Two uninterrupted 2-epoch runs (A, B) and one stopped after epoch 1 and resumed by a
    fresh model and a second train() call (R), as a restarted job does."""
    splits = synthetic_splits(ctx.sizes.check_images)
    # milestone at epoch 1: the resumed run must also restore the scheduler's state.
    settings = TrainSettings(epochs=2, batch_size=ctx.sizes.batch, bf16=bf16, milestones=(1,), val_augment=True)
    root = Path(tempfile.mkdtemp(prefix="check-", dir=ctx.tmp))

    def fresh():
        model = build_model("resnet34", num_classes=10, in_channels=3, width=ctx.sizes.check_width, seed=1)
        return model, prune(model, "Rand", DENSITY, seed=1)

    def run(name, model, **kw):
        return T.train(model, splits, settings, root / name, seed=1, device=ctx.device, progress=False, **kw)

    start = time.time()
    model_a, masks_a = fresh()
    result_a = run("a", model_a)
    model_b, _ = fresh()
    run("b", model_b)
    stopped = run("r", fresh()[0], stop_after=1)
    model_r, _ = fresh()
    result_r = run("r", model_r)
    hist = {name: pd.read_csv(root / name / HISTORY) for name in "abr"}
    rerun_state, rerun_exact = state_diff(model_a.state_dict(), model_b.state_dict())
    resume_state, resume_exact = state_diff(model_a.state_dict(), model_r.state_dict())
    rerun_hist, resume_hist = history_diff(hist["a"], hist["b"]), history_diff(hist["a"], hist["r"])
    masks = mask_report(model_a, masks_a, ctx.device)
    masks_ok = masks["pruned_nonzero_effective"] == 0 and masks["masks_changed"] == 0 \
        and masks["noise_under_mask_output_diff"] == 0
    if resume_exact and resume_hist == 0:
        resume_verdict = "exact"
    elif resume_state <= 2 * rerun_state and resume_hist <= 2 * rerun_hist + 1e-12:
        resume_verdict = "within run-to-run noise"
    else:
        resume_verdict = "DIFFERS beyond run-to-run noise"
    return {"status": result_a["status"], "bf16_used": result_a["bf16_used"], "num_train": result_a["num_train"],
            "stopped_status": stopped["status"], "resumed_status": result_r["status"],
            "resumed_epochs": result_r["epochs_run"], **masks, "masks_ok": masks_ok,
            "resume_state_maxdiff": resume_state, "resume_exact": resume_exact, "resume_history_maxdiff": resume_hist,
            "rerun_state_maxdiff": rerun_state, "rerun_exact": rerun_exact, "rerun_history_maxdiff": rerun_hist,
            "resume_verdict": resume_verdict, "final_train_loss": round(hist["a"]["train_loss"].iloc[-1], 4),
            "seconds": round(time.time() - start, 1)}


# ------------------------------------------------------------------------------ workers
def worker_spec(ctx: Context, ctl: Path, i: int, arch: str, bf16: bool, *, compile_mode: str | None, threads: int,
                block_steps: int, masked: bool = True) -> Path:
    spec = {"id": i, "arch": arch, "masked": masked, "bf16": bf16, "compile_mode": compile_mode,
            "block_steps": block_steps,
            "sizes": dataclasses.asdict(ctx.sizes), "device": str(ctx.device), "threads": threads,
            "warmup_blocks": 1 if compile_mode is None else 2,  # compile: a recompile may follow the first call
            "ready": str(ctl / f"ready{i}.json"), "phases": str(ctl / "phases.json"),
            "result": str(ctl / f"result{i}.json"), "give_up_at": time.time() + ctx.budget.left() + 30}
    return write_json(ctl / f"spec{i}.json", spec)


def spawn(ctx: Context, spec_path: Path, log_path: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           # Caches of the worker's own (in its temporary folder): a compile killed at the
           # deadline leaves half-written kernels that would break the next compile (seen on
           # the CPU: "main.so: file too short"); compile times are then cold, as on a fresh machine.
           "TORCHINDUCTOR_CACHE_DIR": str(spec_path.parent / "inductor"),
           "TRITON_CACHE_DIR": str(spec_path.parent / "triton")}
    with open(log_path, "w") as out:
        # A session of its own: the worker and whatever it starts (inductor's compile pool)
        # are ended together, by the worker's process group.
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ctx.procs.append(proc)
    return proc


def stop(ctx: Context, procs: list[subprocess.Popen]) -> None:
    """End these workers (each with its process group) unless they have exited."""
    for proc in list(procs):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc in ctx.procs:
            ctx.procs.remove(proc)


def log_tail(path: Path, lines: int = 3) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(line.strip() for line in text[-lines:])[:500]


def wait_ready(procs, ctl: Path, timeout: float) -> list[dict]:
    """Every worker's ready file, or RuntimeError (a worker died, or the time ran out)."""
    end = time.monotonic() + timeout
    while True:
        ready = [ctl / f"ready{i}.json" for i in range(len(procs))]
        if all(p.exists() for p in ready):
            return [read_json(p) for p in ready]
        for i, proc in enumerate(procs):
            if proc.poll() is not None and not ready[i].exists():
                raise RuntimeError(f"worker {i} exited {proc.returncode}: {log_tail(ctl / f'worker{i}.log')}")
        if time.monotonic() > end:
            raise RuntimeError(f"workers not ready after {timeout:.0f} s (deadline): "
                               f"{log_tail(ctl / 'worker0.log', 1)}")
        time.sleep(0.2)


def run_phases(ctx: Context, procs, ctl: Path, ready: list[dict], ks, seconds: float) -> list[dict]:
    """Tell the workers the windows (phase k: workers 0..k-1 train from start to end), sample
    the GPU during each, collect their counts."""
    gap = max(1.0, 2 * max(r["block_s"] for r in ready))  # a straddling block ends before the next window
    t, phases = time.time() + 1.0, []
    for k in ks:
        phases.append({"k": k, "start": t, "end": t + seconds})
        t += seconds + gap
    write_json(ctl / "phases.json", phases)
    samples = []
    for phase in phases:
        time.sleep(max(0.0, phase["start"] - time.time()))
        with GpuSampler(ctx.smi_args) as sampler:
            time.sleep(max(0.0, phase["end"] - time.time()))
        samples.append(sampler.summary())
    for i, proc in enumerate(procs):
        try:
            proc.wait(timeout=max(5.0, gap + 30))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"worker {i} did not finish: {log_tail(ctl / f'worker{i}.log')}") from None
    results = [read_json(ctl / f"result{i}.json") for i in range(len(procs))]
    out = []
    for phase, sample in zip(phases, samples):
        counts = [p for r in results for p in r["phases"] if p["k"] == phase["k"]]
        out.append({"k": phase["k"], "images": sum(p["images"] for p in counts), "seconds": seconds, **sample,
                    "worker_max_alloc_gib": max(r["max_alloc_gib"] for r in results[:phase["k"]]),
                    "worker_max_reserved_gib": max(r["max_reserved_gib"] for r in results[:phase["k"]]),
                    "warmup_s": round(max(r["warmup_s"] for r in results[:phase["k"]]), 1)})
    return out


def worker_main(spec_path: str) -> int:
    """One --worker: set up the masked step, warm up (and compile), say ready, then train
    through the time windows of phases.json that include it; write its image counts."""
    spec = read_json(spec_path)
    torch.set_num_threads(spec["threads"])
    sizes, device = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["sizes"].items()}), \
        torch.device(spec["device"])
    start = time.time()
    step = make_step(spec["arch"], masked=spec["masked"], bf16=spec["bf16"], sizes=sizes, device=device,
                     compile_mode=spec["compile_mode"])
    for _ in range(spec["warmup_blocks"]):
        step.block(sizes.warmup_steps)
    warmup_s = time.time() - start
    block_start = time.time()
    step.block(spec["block_steps"])
    block_s = time.time() - block_start
    reset_memory(device, release=False)
    write_json(spec["ready"], {"warmup_s": warmup_s, "block_s": block_s, **dynamo_stats("warmup")})
    while not os.path.exists(spec["phases"]):
        if time.time() > spec["give_up_at"]:
            return 1
        time.sleep(0.05)
    counts = []
    for phase in read_json(spec["phases"]):
        if spec["id"] >= phase["k"]:
            continue
        time.sleep(max(0.0, phase["start"] - time.time()))
        blocks = run_until(step, spec["block_steps"], phase["end"])
        counts.append({"k": phase["k"], "images": images_in_window(blocks, phase["start"], phase["end"])})
    write_json(spec["result"], {"phases": counts, "warmup_s": warmup_s, **memory_stats(device),
                                **dynamo_stats("timed")})
    return 0


def dynamo_stats(when: str) -> dict:
    """What torch.compile did so far in this process: graphs compiled (more after the warm-up
    than before the timing means it recompiled while timed), graph breaks with their most common
    reason, and why CUDA graphs were skipped ("reduce-overhead"); empty when nothing compiled."""
    from torch._dynamo.utils import counters  # only once torch.compile has been used

    graphs = counters["stats"].get("unique_graphs", 0)
    if not graphs:
        return {}
    breaks = counters["graph_break"]
    skips = counters["inductor"].get("cudagraph_skips", 0)
    out = {f"graphs_{when}": graphs, f"graph_breaks_{when}": sum(breaks.values()), f"cudagraph_skips_{when}": skips}
    if breaks:
        out[f"graph_break_reason_{when}"] = max(breaks, key=breaks.get)[:200]
    return out


# ------------------------------------------------------------------------------ 4. concurrency
def part_concurrency(ctx: Context, arch: str, bf16: bool) -> None:
    table = ctx.table("concurrency")
    ks, seconds = ctx.sizes.conc_ks, ctx.sizes.conc_seconds
    base = ctx.row_base(arch, variant="masked", precision=precision(bf16), mode="processes")
    if not ctx.budget.fits(ctx.sizes.cost_conc):
        table.add({**base, "k": ",".join(map(str, ks)), "status": "skipped: deadline"})
        return
    ctl = Path(tempfile.mkdtemp(prefix=f"conc-{arch}-{precision(bf16)}-", dir=ctx.tmp))
    threads = max(1, (os.cpu_count() or 1) // max(ks))
    procs = []
    try:
        for i in range(max(ks)):
            spec = worker_spec(ctx, ctl, i, arch, bf16, compile_mode=None, threads=threads,
                               block_steps=ctx.sizes.conc_block_steps)
            procs.append(spawn(ctx, spec, ctl / f"worker{i}.log", threads))
        ready = wait_ready(procs, ctl, timeout=max(10.0, ctx.budget.left() - len(ks) * (seconds + 3)))
        phases = run_phases(ctx, procs, ctl, ready, ks, seconds)
    except Exception as err:
        table.add({**base, "k": ",".join(map(str, ks)), "status": error_text(err)})
        traceback.print_exc()
        return
    finally:
        stop(ctx, procs)
    inprocess = eager_img_s(ctx, arch, "masked", bf16)
    single = phases[0]["images"] / seconds if phases[0]["k"] == 1 else math.nan
    for phase in phases:
        agg = phase.pop("images") / seconds
        table.add({**base, "k": phase["k"], "status": "ok", "aggregate_img_s": round(agg, 1),
                   "per_run_img_s": round(agg / phase["k"], 1), "gain_vs_k1": round(agg / single, 3),
                   "inprocess_img_s": inprocess, "gain_vs_inprocess": round(agg / inprocess, 3), **phase})
    if not bf16:
        part_concurrent_table(ctx)


def part_concurrent_table(ctx: Context) -> None:
    """bench_train_gpu_concurrent.csv, when K runs at once beat one in-process run (the rate
    of bench_train_gpu.csv) by 5% or more for an architecture (fp32, as the paper profile
    trains): ``workbook_img_s`` is then the
    aggregate of the best K (the estimate divides the grid's images by it); an architecture
    where concurrency does not win (or was not measured) keeps its one-run rate."""
    if "concurrency" not in ctx.tables or not (ctx.out / "bench_train_gpu.csv").exists():
        return
    conc = ctx.table("concurrency").frame()
    conc = conc[(conc["status"] == "ok") & (conc["precision"] == "fp32")] if "aggregate_img_s" in conc else conc[:0]
    rows, wins = [], False
    for row in pd.read_csv(ctx.out / "bench_train_gpu.csv").to_dict("records"):
        mine = conc[conc["arch"] == row["arch"]]
        best = mine.loc[mine["aggregate_img_s"].idxmax()] if len(mine) else None
        if best is not None and best["aggregate_img_s"] >= 1.05 * row["workbook_img_s"]:
            wins = True
            row.update(workbook_img_s=best["aggregate_img_s"], concurrent_runs=int(best["k"]),
                       per_run_img_s=best["per_run_img_s"], single_run_img_s=row["workbook_img_s"],
                       ratio=round(best["aggregate_img_s"] / row["bare_img_s"], 3))
        else:
            row.update(concurrent_runs=1, per_run_img_s=row["workbook_img_s"], single_run_img_s=row["workbook_img_s"])
        rows.append(row)
    if wins:
        write_table(pd.DataFrame(rows), ctx.out / "bench_train_gpu_concurrent.csv")
        log("[bench_train_gpu_concurrent] written: concurrent runs win")
    else:
        log("[bench_train_gpu_concurrent] not written: no K beats one in-process run by 5% (fp32)")


# ------------------------------------------------------------------------------ 6. compile
def part_compile(ctx: Context, arch: str, masked: bool, bf16: bool, mode: str = "default") -> None:
    """torch.compile of one config with ``mode``, in a worker: a compile that hangs past the
    deadline is killed with its process group, one that crashes takes only the worker with it."""
    table = ctx.table("throughput")
    row = ctx.row_base(arch, variant="masked" if masked else "bare", precision=precision(bf16), compile=True,
                       mode="compile, worker", compile_mode=mode)
    if ctx.args.no_compile:
        table.add({**row, "status": "skipped: --no-compile"})
        return
    if not ctx.budget.fits(ctx.sizes.cost_compile):
        table.add({**row, "status": "skipped: deadline"})
        return
    ctl = Path(tempfile.mkdtemp(prefix=f"compile-{arch}-", dir=ctx.tmp))
    # Every core (also on the CPU, where inductor's C++ kernels built for one OpenMP thread
    # crashed with "corrupted size vs. prev_size" under torch 2.14).
    threads = os.cpu_count() or 1
    spec = worker_spec(ctx, ctl, 0, arch, bf16, compile_mode=mode, threads=threads,
                       block_steps=ctx.sizes.block_steps, masked=masked)
    procs = [spawn(ctx, spec, ctl / "worker0.log", threads)]
    start = time.time()
    try:
        seconds = ctx.sizes.min_seconds
        ready = wait_ready(procs, ctl, timeout=ctx.budget.left() - seconds - 5)
        phase = run_phases(ctx, procs, ctl, ready, (1,), seconds)[0]
        img_s = phase.pop("images") / seconds
        phase.pop("k")
        phase["timed_s"] = phase.pop("seconds")
        row.update(status="ok", img_s=round(img_s, 1), compile_warmup_s=round(ready[0]["warmup_s"], 1),
                   epoch_train_s=round(images_per_epoch(ctx.sizes.batch) / img_s, 2),
                   eager_img_s=eager_img_s(ctx, arch, row["variant"], bf16), **phase)
        row["speedup_vs_eager"] = round(img_s / row["eager_img_s"], 3)
        row.update({k: v for k, v in ready[0].items() if k.startswith(("graph", "cudagraph"))})
        row.update({k: v for k, v in read_json(ctl / "result0.json").items() if k.startswith(("graph", "cudagraph"))})
    except Exception as err:
        row.update(status=error_text(err), seconds_spent=round(time.time() - start, 1))
    finally:
        stop(ctx, procs)
    table.add(row)


# ------------------------------------------------------------------------------ summary
def summary(ctx: Context) -> None:
    log("\n" + "=" * 30 + " summary " + "=" * 30)
    env = {r["key"]: r["value"] for r in ctx.tables["env"].rows} if "env" in ctx.tables else {}
    log(f"torch {env.get('torch')} cuda {env.get('cuda')} cudnn {env.get('cudnn')} | "
        f"{env.get('device_name', ctx.device)} SMs {env.get('sm_count', '-')} {env.get('memory_gib', '-')} GiB | "
        f"{env.get('smi_driver_clock_power_mig', '')}")
    views = {
        "throughput": ["arch", "variant", "precision", "compile", "mode", "compile_mode", "status", "img_s",
                       "epoch_train_s", "epoch1_s", "epoch2_s", "max_alloc_gib", "gpu_util_mean",
                       "compile_warmup_s", "speedup_vs_eager", "graphs_timed", "graph_breaks_timed",
                       "cudagraph_skips_timed"],
        "checks": ["precision", "determinism", "status", "masks_ok", "pruned_nonzero_effective", "masks_changed",
                   "noise_under_mask_output_diff", "resume_exact", "resume_state_maxdiff", "rerun_exact",
                   "rerun_state_maxdiff", "resume_verdict"],
        "concurrency": ["arch", "precision", "k", "status", "aggregate_img_s", "per_run_img_s", "gain_vs_k1",
                        "gain_vs_inprocess", "gpu_util_mean", "smi_mem_used_mib_max", "worker_max_reserved_gib"],
    }
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 60):
        for name, cols in views.items():
            if name in ctx.tables:
                frame = ctx.tables[name].frame()
                log(f"\n-- {name}.csv")
                log(frame[[c for c in cols if c in frame]].to_string(index=False, max_colwidth=60))
        for name in ("bench_train_gpu", "bench_train_gpu_concurrent"):
            path = ctx.out / f"{name}.csv"
            if path.exists():
                log(f"\n-- {name}.csv (python -m lib estimate --profile paper --bench {name}.csv)")
                log(pd.read_csv(path).drop(columns=["timing", "masks"], errors="ignore")
                    .to_string(index=False, max_colwidth=60))
    if ctx.skipped:
        log("\nskipped: " + ", ".join(ctx.skipped))
    log(f"\nfiles in {ctx.out}: {', '.join(sorted(p.name for p in ctx.out.iterdir() if not p.name.startswith('.')))}")


# ------------------------------------------------------------------------------ main
def hard_stop(ctx: Context) -> None:
    """The watchdog: the deadline and its grace have passed while a task still runs."""
    log(f"\n!! deadline + {ctx.args.grace:.0f} s passed during a task: stopping here")
    stop(ctx, ctx.procs)
    with contextlib.suppress(Exception):
        summary(ctx)
    shutil.rmtree(ctx.tmp, ignore_errors=True)
    sys.stdout.flush()
    os._exit(3)


def plan(ctx: Context) -> list[tuple[str, object]]:
    """The tasks in order of priority (name, thunk); each checks the budget itself."""
    splits_cache: dict = {}
    tasks = [("eager", lambda: part_eager(ctx)), ("bench_train", lambda: part_bench_train(ctx))]
    tasks += [(f"epoch {precision(b)}", functools.partial(part_real_epoch, ctx, b, splits_cache))
              for b in (False, True)]
    tasks.append(("free epoch data", splits_cache.clear))
    tasks += [(f"check {precision(b)}{' deterministic' * d}", functools.partial(part_check, ctx, b, d))
              for d in (False, True) for b in (False, True)]
    conc = [(f"concurrency {a} {precision(b)}", functools.partial(part_concurrency, ctx, a, b))
            for a, b in (("resnet34", False), ("resnet34", True), ("vgg16", False), ("vgg16", True))]
    comp = [(f"compile {a} {v} {p} {mode}", functools.partial(part_compile, ctx, a, v == "masked", p == "bf16", mode))
            for a, v, p, mode in ctx.args.compile]
    # Concurrency and compile alternate (the first three of each), so a short budget gets some of each.
    for i in range(3):
        tasks += conc[i:i + 1] + comp[i:i + 1]
    return tasks + conc[3:] + comp[3:]


COMPILE_CONFIGS = tuple((a, v, p, "default") for a, v, p in (
    ("resnet34", "masked", "fp32"), ("vgg16", "masked", "fp32"), ("resnet34", "masked", "bf16"),
    ("vgg16", "masked", "bf16"), ("resnet34", "bare", "fp32"), ("vgg16", "bare", "fp32"),
    ("resnet34", "bare", "bf16"), ("vgg16", "bare", "bf16")))
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_config(text: str) -> tuple[str, str, str, str]:
    """``arch/variant/precision/mode`` (argparse type of --compile)."""
    parts = text.split("/")
    if len(parts) != 4 or parts[0] not in ARCHS or parts[1] not in ("masked", "bare") \
            or parts[2] not in ("fp32", "bf16") or parts[3] not in COMPILE_MODES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give arch/variant/precision/mode with arch in {ARCHS}, variant masked or bare, "
            f"precision fp32 or bf16, mode in {COMPILE_MODES}")
    return tuple(parts)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for the CSVs (at most 8 files; log.txt is the tee)")
    p.add_argument("--deadline", type=float, default=400, help="wall seconds from start for everything")
    p.add_argument("--grace", type=float, default=15,
                   help="seconds past the deadline before a task still running is cut off (exit status 3)")
    p.add_argument("--tiny", action="store_true", help="width 1/16, batch 32, a few steps: a test, CPU allowed")
    p.add_argument("--no-compile", action="store_true", help="record the torch.compile configs as skipped")
    p.add_argument("--compile", nargs="+", type=compile_config, default=list(COMPILE_CONFIGS), metavar="A/V/P/MODE",
                   help="torch.compile configs in the order run, e.g. resnet34/masked/fp32/reduce-overhead "
                        "(arch/variant/precision/mode; default: the eight eager configs in mode default)")
    p.add_argument("--skip", nargs="*", default=[], metavar="WORD",
                   help="skip tasks whose name contains WORD (eager, epoch, check, concurrency, compile)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a spec file: see worker_main
    args = p.parse_args(argv)
    if args.worker is None and args.out is None:
        p.error("--out is required")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    budget = Budget(args.deadline)
    if not torch.cuda.is_available() and not args.tiny:
        print("bench_gpu.py: error: no CUDA device here (run with --tiny to test on the CPU)", file=sys.stderr)
        return 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        # A shared CPU: OpenMP threads that spin-wait for a core another process holds make a
        # step up to 100x slower; one thread keeps the test's timings sane.
        torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    ctx = Context(args=args, sizes=TINY if args.tiny else FULL, device=device, budget=budget, out=out, tmp=tmp,
                  smi_args=smi_selection(device))
    # A task can overrun its estimate (budget checks come between tasks): past the deadline
    # plus a grace, the watchdog prints the summary and ends the process (CSVs are on disk).
    watchdog = threading.Timer(max(0.0, STARTED + args.deadline + args.grace - time.monotonic()),
                               hard_stop, args=(ctx,))
    watchdog.daemon = True
    watchdog.start()
    try:
        part_env(ctx)
        for name, task in plan(ctx):
            if any(word in name for word in args.skip):
                ctx.skipped.append(f"{name} (--skip)")
                continue
            log(f"\n== {name} ({budget.left():.0f} s left)")
            task()
    finally:
        watchdog.cancel()
        shutil.rmtree(tmp, ignore_errors=True)
        summary(ctx)
    # The device has no submitit or papermill: nothing imported here may need them.
    leaked = [m for m in ("submitit", "papermill", "nbval") if m in sys.modules]
    log(f"imports: {'OK, no ' if not leaked else 'LEAKED '}{', '.join(leaked or ['submitit/papermill/nbval'])}")
    if args.tiny:
        assert not leaked, leaked
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
