"""Training a pruned model with its masks held fixed: resumable, and robust to bad masks.

This module owns *turning a mask into an accuracy*: the training loop (paper, Table 1: SGD
with momentum, weight decay, MultiStepLR), the per-epoch history, the reported accuracy (test
accuracy at the first epoch of best validation accuracy), checkpoints and resume, and the
detection of runs that diverge or whose mask empties a layer.

Masks are the ``weight_mask`` buffers of :mod:`torch.nn.utils.prune`: its forward pre-hook
sets ``weight = weight_orig * weight_mask``, SGD updates ``weight_orig``, and the gradient
reaching ``weight_orig`` is already masked. So the weights the network uses stay exactly zero
where pruned; ``weight_orig`` itself still moves there under weight decay (SGD adds
``weight_decay * weight_orig`` to the zero gradient), which the mask hides.

A run's folder holds the files :mod:`lib.store` names: ``checkpoint.pt`` (after every epoch;
removed when the run finishes unless ``keep_checkpoint``), ``history.csv`` (one row per epoch)
and ``result.json`` (written once, when the run is done or diverged: "do not retrain").
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn.functional as F

from . import data as data_lib
from .files import read_json, save_torch, write_json, write_table
from .models import prunable_layers
from .progress import bar as progress_bar
from .pruning import empty_layers, overall_density
from .seeds import stream_seed
from .settings import TrainSettings, settings_dict
from .store import CHECKPOINT, FINISHED, HISTORY, RESULT

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_acc", "test_acc", "lr",
                   "epoch_seconds"]
PROGRESS_MININTERVAL = 30.0  # seconds between progress-bar refreshes (papermill logs)


# --------------------------------------------------------------------------- helpers


def applied_masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The ``weight_mask`` of every pruned layer (unpruned layers are left out)."""
    return {name: m.weight_mask for name, m in prunable_layers(model).items() if hasattr(m, "weight_mask")}


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _data_generator(seed: int) -> torch.Generator:
    # Shuffling and augmentation draw from their own stream (lib.seeds).
    return torch.Generator().manual_seed(stream_seed(seed, "shuffle"))


# --------------------------------------------------------------------------- step loop


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, *, autocast=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on ``(x, y)``; returns the summed loss and the number correct, as
    device tensors (no host synchronisation)."""
    with autocast if autocast is not None else contextlib.nullcontext():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    loss = loss.detach().float()
    return loss * len(y), (logits.detach().argmax(1) == y).sum()


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                batch_iter: Iterable[tuple[torch.Tensor, torch.Tensor]], *, autocast=None,
                on_sync: Callable[[int, float, float], bool] | None = None,
                sync_every: float = PROGRESS_MININTERVAL) -> dict:
    """Run :func:`train_step` over ``batch_iter`` (model in train mode).

    Loss and accuracy are summed on the device and read back only every ``sync_every``
    seconds (for ``on_sync(steps, mean_loss, accuracy)``, which returns ``False`` to stop
    the epoch, e.g. on a non-finite loss) and at the end. Returns ``{"loss", "acc",
    "images", "steps", "finite"}`` with the epoch's means.
    """
    model.train()
    loss_sum = correct = None
    images = steps = 0
    last = time.monotonic()
    for x, y in batch_iter:
        loss, right = train_step(model, optimizer, x, y, autocast=autocast)
        loss_sum = loss if loss_sum is None else loss_sum + loss
        correct = right if correct is None else correct + right
        images += len(y)
        steps += 1
        if on_sync is not None and time.monotonic() - last >= sync_every:
            last = time.monotonic()
            mean_loss = loss_sum.item() / images
            if on_sync(steps, mean_loss, correct.item() / images) is False:
                break
    if steps == 0:
        raise ValueError("no training batch: the training set is smaller than one batch")
    mean_loss = loss_sum.item() / images
    return {"loss": mean_loss, "acc": correct.item() / images, "images": images,
            "steps": steps, "finite": math.isfinite(mean_loss)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, image_set: data_lib.ImageSet, *, batch_size: int,
             device, mean, std, autocast=None, memory_format=torch.contiguous_format,
             augment: torch.Generator | None = None, padding: str = "reflect") -> float:
    """Accuracy (a fraction in [0, 1]) of ``model`` in eval mode on every image of ``image_set``;
    with a generator as ``augment``, on the images as the training augmentation draws them."""
    if len(image_set) == 0:
        return float("nan")
    model.eval()
    correct = None
    for x, y in data_lib.batches(image_set, batch_size, train=False, device=device, mean=mean,
                                 std=std, augment=augment is not None, generator=augment,
                                 memory_format=memory_format, padding=padding):
        with autocast if autocast is not None else contextlib.nullcontext():
            right = (model(x).argmax(1) == y).sum()
        correct = right if correct is None else correct + right
    return correct.item() / len(image_set)


# --------------------------------------------------------------------------- train


def _check_splits(splits: data_lib.Splits, settings: TrainSettings) -> None:
    if splits.val_split != settings.val_split:
        raise ValueError(f"splits were loaded with val_split={splits.val_split!r} but settings say "
                         f"{settings.val_split!r}; call load_data(..., val_split={settings.val_split!r})")
    for field in ("val_fraction", "train_fraction", "test_fraction"):
        have, want = getattr(splits, field), getattr(settings, field)
        if not math.isclose(have, want):
            raise ValueError(
                f"splits were loaded with {field}={have} but settings say {want}; call "
                f"load_data(..., val_fraction={settings.val_fraction}, "
                f"train_fraction={settings.train_fraction}, "
                f"test_fraction={settings.test_fraction})")
    if len(splits.val) == 0:
        raise ValueError("the validation set is empty: the reported accuracy needs one")
    if len(splits.train) < settings.batch_size:
        raise ValueError(f"{len(splits.train)} training images are fewer than one batch "
                         f"({settings.batch_size})")


def _finite_or_none(value):
    """NaN and infinities as ``None``, so that result.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _select(history: list[dict]) -> dict:
    """Best epoch = first epoch of highest validation accuracy (finite rows only)."""
    rows = [r for r in history if r["val_acc"] == r["val_acc"]]  # drop NaN
    if not rows:
        return {"best_epoch": None, "val_acc": None, "test_acc": None}
    best = max(rows, key=lambda r: r["val_acc"])  # max() keeps the first on ties
    return {"best_epoch": best["epoch"], "val_acc": best["val_acc"], "test_acc": best["test_acc"]}


def _data_on(splits: data_lib.Splits, device: torch.device) -> data_lib.Splits:
    """Move the data to the GPU when it takes at most a quarter of the free memory."""
    if device.type != "cuda":
        return splits
    free, _ = torch.cuda.mem_get_info(device)
    if splits.nbytes <= free / 4:
        return splits.to(device)
    return splits


@dataclasses.dataclass
class _Loop:
    """What one training run holds while it runs."""

    model: torch.nn.Module
    data: data_lib.Splits
    settings: TrainSettings
    device: torch.device
    autocast: object
    memory_format: torch.memory_format
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    identity: dict
    history: list
    sync_every: float = math.inf  # seconds between reads of the running loss (for the bar)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def epoch(self, epoch: int, progress) -> str | None:
        """Train and evaluate one epoch, append its history row; ``"diverged"`` or ``None``."""
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        done_steps = 0

        def on_sync(steps, loss, acc):
            nonlocal done_steps
            progress.update(steps - done_steps)
            progress.set_postfix(epoch=epoch, loss=f"{loss:.3f}", acc=f"{acc:.3f}", refresh=False)
            done_steps = steps
            return math.isfinite(loss)

        data = self.data
        batch_iter = data_lib.batches(data.train, self.settings.batch_size, train=True,
                                      generator=self.generator, device=self.device, mean=data.mean,
                                      std=data.std, augment=True, memory_format=self.memory_format,
                                      padding=data.padding)
        stats = train_epoch(self.model, self.optimizer, batch_iter, autocast=self.autocast,
                            on_sync=on_sync, sync_every=self.sync_every)
        progress.update(stats["steps"] - done_steps)
        status = None
        if not stats["finite"]:
            status = "diverged"
            val_acc = test_acc = float("nan")
        else:
            kw = dict(batch_size=self.settings.batch_size * 2, device=self.device, mean=data.mean,
                      std=data.std, autocast=self.autocast, memory_format=self.memory_format,
                      padding=data.padding)
            val_acc = evaluate(self.model, data.val, augment=self.val_augmentation(epoch), **kw)
            test_acc = evaluate(self.model, data.test, **kw)
        self.scheduler.step()
        self.history.append({"epoch": epoch, "train_loss": stats["loss"], "train_acc": stats["acc"],
                             "val_acc": val_acc, "test_acc": test_acc, "lr": lr,
                             "epoch_seconds": time.perf_counter() - start})
        progress.set_postfix(epoch=epoch, loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}",
                             val=f"{val_acc:.3f}", refresh=False)
        return status

    def val_augmentation(self, epoch: int) -> torch.Generator | None:
        """The generator of epoch ``epoch``'s validation augmentation (``val_augment``), derived
        from the seed and the epoch alone, so a resumed run draws the same crops."""
        if not self.settings.val_augment:
            return None
        return torch.Generator().manual_seed(stream_seed(self.identity["seed"], f"val/{epoch}"))

    def state(self) -> dict:
        """Everything a resumed run needs to continue exactly where this one is."""
        return {
            "identity": self.identity,
            "epoch": len(self.history),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None,
            "history": self.history,
        }

    def resume(self, ckpt_path: Path) -> None:
        """Continue from a checkpoint of this very run, or start seeding dropout afresh."""
        if not ckpt_path.exists():
            torch.manual_seed(stream_seed(self.identity["seed"], "dropout"))
            return
        # On the CPU: RNG states must be CPU tensors; load_state_dict copies the weights and
        # the optimiser state onto the parameters' device.
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt["identity"] != self.identity:
            raise ValueError(f"{ckpt_path} belongs to another run: {ckpt['identity']} != {self.identity}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if self.cuda and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)
        self.history = ckpt["history"]


def _start(model, splits, settings, seed, device, num_threads) -> _Loop:
    """Place the model and data, build the optimiser, scheduler and data generator."""
    device = _resolve_device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    elif num_threads:
        # Otherwise torch's default stands: all cores, or OMP_NUM_THREADS where a runner that
        # trains several units side by side has split the cores between them (two processes
        # with all cores each run many times slower than one, from OpenMP oversubscription).
        torch.set_num_threads(num_threads)
    if settings.bf16 and not cuda:
        warnings.warn("settings.bf16 is ignored on CPU: training runs in float32")
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.milestones),
                                                     gamma=settings.gamma)
    identity = {"settings": settings_dict(settings), "seed": int(seed), "dataset": splits.name,
                "split_seed": splits.seed}
    return _Loop(model=model, data=_data_on(splits, device), settings=settings, device=device,
                 autocast=_autocast(device, settings.bf16), memory_format=memory_format,
                 optimizer=optimizer, scheduler=scheduler, generator=_data_generator(seed),
                 identity=identity, history=[])


def _result(loop: _Loop, splits, status, diverged_epoch, empties, density) -> dict:
    history = loop.history
    result = {
        "status": status,
        **_select(history),
        "epochs_run": len(history),
        "diverged_epoch": diverged_epoch,
        "empty_layers": empties,
        "mask_density": density,
        "final_val_acc": history[-1]["val_acc"] if history else None,
        "final_test_acc": history[-1]["test_acc"] if history else None,
        "train_seconds": sum(r["epoch_seconds"] for r in history),
        "num_train": len(splits.train), "num_val": len(splits.val), "num_test": len(splits.test),
        "device": str(loop.device),
        "bf16_used": bool(loop.settings.bf16 and loop.cuda),
        "torch": torch.__version__,
        **loop.identity,
    }
    return {k: _finite_or_none(v) for k, v in result.items()}


def train(model: torch.nn.Module, splits: data_lib.Splits, settings: TrainSettings,
          run_dir: str | os.PathLike, *, seed: int = 0, device=None, progress: bool = True,
          num_threads: int | None = None, stop_after: int | None = None,
          keep_checkpoint: bool = False) -> dict:
    """Train ``model`` (masks applied, held fixed) on ``splits``; return the result dict.

    A finished run (``result.json`` with status ``done`` or ``diverged``) is not retrained:
    its result is returned at once. An unfinished one resumes from ``checkpoint.pt`` and
    ends with the same history as an uninterrupted run (exactly, on CPU; on GPU up to
    cuDNN's own run-to-run noise). Every random source is seeded from ``seed``: a
    ``torch.Generator`` for shuffling and augmentation, ``torch.manual_seed`` for dropout.

    ``stop_after``: return after that many epochs in total, leaving the checkpoint and no
    ``result.json`` (status ``"stopped"``), for slicing a run or testing resume.
    ``keep_checkpoint``: keep ``checkpoint.pt`` (final weights, optimiser) after finishing.

    The model is moved to ``device`` (default CUDA if available) and trained in place. On
    CPU, ``num_threads`` sets torch's thread count; by default torch's own (every core, or
    ``OMP_NUM_THREADS``). On CUDA: channels_last, data on the GPU when it fits, cuDNN
    benchmark, and bf16 autocast if ``settings.bf16``. A non-finite training loss stops the
    run with status ``diverged``; a layer whose mask keeps nothing is trained anyway and
    listed in ``empty_layers``.
    """
    run_dir = Path(run_dir)
    result_path = run_dir / RESULT
    if result_path.exists():
        result = read_json(result_path)
        if result.get("status") in FINISHED:
            return result
    _check_splits(splits, settings)
    run_dir.mkdir(parents=True, exist_ok=True)

    loop = _start(model, splits, settings, seed, device, num_threads)
    ckpt_path = run_dir / CHECKPOINT
    loop.resume(ckpt_path)
    masks = applied_masks(model)
    empties = empty_layers(masks)
    density = overall_density(masks) if masks else None
    steps_per_epoch = len(loop.data.train) // settings.batch_size
    last_epoch = settings.epochs if stop_after is None else min(settings.epochs, stop_after)
    status, diverged_epoch = None, None

    shown = progress and len(loop.history) < last_epoch
    loop.sync_every = PROGRESS_MININTERVAL if shown else math.inf
    bar = progress_bar(enabled=shown, total=settings.epochs * steps_per_epoch,
                       initial=len(loop.history) * steps_per_epoch, desc=f"train {run_dir.name}"[:60],
                       unit="step", mininterval=PROGRESS_MININTERVAL, dynamic_ncols=True)
    try:
        for epoch in range(len(loop.history) + 1, last_epoch + 1):
            if loop.epoch(epoch, bar) == "diverged":
                status, diverged_epoch = "diverged", epoch
                break
            save_torch(loop.state(), ckpt_path)
            write_table(pd.DataFrame(loop.history, columns=HISTORY_COLUMNS), run_dir / HISTORY)
    finally:
        bar.close()

    write_table(pd.DataFrame(loop.history, columns=HISTORY_COLUMNS), run_dir / HISTORY)
    if status is None:
        status = "done" if len(loop.history) >= settings.epochs else "stopped"
    result = _result(loop, splits, status, diverged_epoch, empties, density)
    if status in FINISHED:
        write_json(result_path, result)
        if not keep_checkpoint and ckpt_path.exists():
            ckpt_path.unlink()
    return result
