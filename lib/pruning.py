"""Pruning at initialisation: the methods, their scores, and masks from scores.

This module owns:

* :data:`METHODS` -- the registry, one :class:`Method` per pruning method: its scorer (or its
  direct mask rule), whether it needs training batches or real initial weights, whether its
  scores depend on the density, and the options it accepts. Everything else in the workbook
  (settings, units, plots) reads it; adding a method is one entry here plus its scorer.
* :func:`global_mask` -- THE one function that turns scores into a mask: it keeps exactly
  ``floor(density * N)`` of the ``N`` prunable weights globally; ties at the threshold go to
  the earlier layer, then the earlier row-major position.
* Masks on models and on disk: :func:`compute_masks`, :func:`prune`, :func:`apply_masks`,
  :func:`validate_masks`, :func:`masks_of`, :func:`save_masks`, :func:`load_masks`,
  :func:`layer_densities`, :func:`overall_density`, :func:`empty_layers`.

Vocabulary: ``density`` is the fraction of weights KEPT (``density=0.01`` is "99% sparsity").
Masks are ``dict[str, torch.BoolTensor]`` keyed by module name (``model.named_modules()``), one
per layer of :func:`lib.models.prunable_layers`, ``True`` = kept, on the CPU. Scores have the
same keys and shapes; larger means "keep first".

Scoring never changes the model: it runs in eval mode on copies of the dense initial weights
(a model pruned with ``torch.nn.utils.prune`` is scored on ``weight_orig``), and
:func:`apply_masks` replaces an existing mask rather than compounding it.
"""
from __future__ import annotations

import contextlib
import functools
import math
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from lib.files import save_torch
from lib.models import prunable_layers
from lib.progress import bar
from lib.seeds import stream_seed

__all__ = [
    "METHODS",
    "Method",
    "LayerCollapseWarning",
    "check_density",
    "method_of",
    "kept_count",
    "score",
    "global_mask",
    "masks_from_scores",
    "erk_densities",
    "erk_masks",
    "compute_masks",
    "prune",
    "apply_masks",
    "remove_masks",
    "validate_masks",
    "masks_of",
    "save_masks",
    "load_masks",
    "layer_densities",
    "overall_density",
    "empty_layers",
]

SYNFLOW_READOUTS = ("sum", "log_softmax")  # R = sum(f(1)) (the SynFlow paper), sum(log_softmax(f(1))) (published masks)
_SAMPLE = 100_000  # values sampled to bracket the global threshold on large models (sorting 1M cost more than the band saved)
_ROUND_SAMPLE = 30_000  # SynFlow's per-round sample: each value is a cache miss, and a wider band costs less than more misses
_SIGMAS = 6.0  # a sampled bracket lies this many standard deviations of a sample rank from its target
_CHUNK = 1 << 22
_COLLECT = 1 << 18  # scores collected per call of a lib.kernels loop (3 MB of buffers in float64)
_LIST_BELOW = 0.35  # a layer less alive than this is scanned through a list of its alive weights
_GROUPED_FROM = 1 << 16  # a Linear layer this large whose input repeats over runs of columns is scanned by runs
_WINDOW_TERMS = 4  # a convolution with at most this many output positions at batch 1 is scored from its output
# gradient and unfolded input (a sum of this many products a weight, where the scan reads it): beyond, materialising
# its weight gradient costs less than the scans' repeated sums (ResNet-34's layer3 at 2x2: 4; layer2 at 4x4: 16)


class LayerCollapseWarning(UserWarning):
    """A mask keeps no weight at all in some layer (the network is disconnected)."""


def check_density(density: float) -> float:
    """Return ``density`` as a float, or raise if it is not a fraction of weights kept."""
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(
            f"density must be in (0, 1] (the fraction of weights kept), got {density!r}; "
            "for 99% sparsity pass density=0.01"
        )
    return value


def kept_count(n: int, density: float) -> int:
    """Number of weights a global mask of ``density`` keeps out of ``n``: ``floor(density * n)``."""
    return math.floor(density * n)


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Selecting the top-k scores globally
# --------------------------------------------------------------------------------------------


def _kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest value of a 1-D tensor without NaN (1 <= k <= n), in O(n).

    ``torch.kthvalue`` on 138M values takes ~5 s on 2 cores; instead a strided sample brackets
    the value, and ``kthvalue`` runs on the (small) band between the brackets. The bracket is
    checked by counting, so the answer is exact whatever the sample looks like. ``-inf``
    values (weights an iterative method removed: most of them at low density) are counted,
    never put in the band, so a bracket reaching down to them costs no more than another.
    """
    n = flat.numel()
    if n <= 4 * _SAMPLE:
        return torch.kthvalue(flat, n - k + 1).values
    sample = flat[:: n // _SAMPLE].sort().values
    r = sample.numel()
    pos = r - k * r / n  # ascending position of the k-th largest in the sample
    margin = _SIGMAS * math.sqrt(r * (k / n) * (1 - k / n)) + 8  # sd of a sample rank, times _SIGMAS
    neg_inf = flat.new_tensor(-math.inf)
    while True:
        lo_i, hi_i = math.floor(pos - margin), math.ceil(pos + margin)
        lo = sample[lo_i] if lo_i > 0 else neg_inf
        hi = sample[hi_i] if hi_i < r - 1 else flat.new_tensor(math.inf)
        above = int((flat > hi).count_nonzero())
        if above < k:
            if bool(lo == hi):  # the bracket is one (tied) value
                if k <= above + int((flat == lo).count_nonzero()):
                    return lo
            else:
                in_band = (flat > lo) if bool(lo == neg_inf) else (flat >= lo)
                band = flat[in_band.logical_and_(flat <= hi)]
                del in_band
                if k <= above + band.numel():
                    j = k - above  # the answer is the j-th largest of the band
                    if band.numel() < n // 2:
                        return _kth_largest(band, j)
                    return torch.kthvalue(band, band.numel() - j + 1).values
                if bool(lo == neg_inf):  # everything below the band is -inf
                    return neg_inf
        if lo_i <= 0 and hi_i >= r - 1:  # unreachable: the widest bracket always decides
            return torch.kthvalue(flat, n - k + 1).values
        margin *= 16


def _top_k_bracketed(flat: torch.Tensor, k: int) -> torch.Tensor | None:
    """``_top_k_flags`` on a large vector from a sampled bracket [lo, hi], or None to fall back.

    Values above ``hi`` are kept (checked: fewer than ``k`` of them), and only the band of
    values in [lo, hi] is ranked: two comparisons over ``flat`` instead of five and a copy
    (iterSNIP ranks all of VGG-16's 138M weights every round). A bracket at an end of the
    sample, on ``-inf`` or on one tied value goes to the general path.
    """
    n = flat.numel()
    sample = flat[:: n // _SAMPLE].sort().values
    r = sample.numel()
    pos = r - k * r / n  # ascending position of the k-th largest in the sample
    margin = _SIGMAS * math.sqrt(r * (k / n) * (1 - k / n)) + 8
    for _ in range(2):
        lo_i, hi_i = math.floor(pos - margin), math.ceil(pos + margin)
        if lo_i <= 0 or hi_i >= r - 1:
            return None
        lo, hi = sample[lo_i], sample[hi_i]
        if bool(lo == hi) or bool(lo == -math.inf):
            return None
        keep = flat > hi
        above = int(keep.count_nonzero())
        if above < k:
            band = flat >= lo
            if int(band.count_nonzero()) >= k:  # the k-th largest is in [lo, hi]
                idx = band.logical_xor_(keep).nonzero().squeeze(1)  # lo <= value <= hi
                del band
                vals = flat[idx]
                j = k - above  # keep the j largest of the band, ties to the earliest
                t = _kth_largest(vals, j)
                over = vals > t
                keep[idx[over]] = True
                need = j - int(over.count_nonzero())
                keep[idx[vals == t][:need]] = True
                return keep
        margin *= 16
    return None


def _top_k_flags(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool flags keeping exactly the ``k`` largest values; ties go to the earliest positions."""
    n = flat.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    keep = flat > -math.inf
    if int(keep.count_nonzero()) == k:  # exactly k above -inf (SynFlow's last round): no ranking
        return keep
    del keep
    if n > 4 * _SAMPLE:
        keep = _top_k_bracketed(flat, k)
        if keep is not None:
            return keep
    t = _kth_largest(flat, k)
    keep = flat >= t
    if int(keep.count_nonzero()) == k:  # the usual case: no tie at the threshold
        return keep
    keep = flat > t
    need = k - int(keep.count_nonzero())
    for start in range(0, n, _CHUNK):  # keep the first `need` values equal to the threshold
        if need <= 0:
            break
        eq = flat[start : start + _CHUNK] == t
        c = int(eq.count_nonzero())
        if c == 0:
            continue
        if c <= need:
            keep[start : start + _CHUNK] |= eq
            need -= c
        else:
            idx = eq.nonzero().squeeze(1)[:need]
            keep[start + idx] = True
            need = 0
    return keep


def _split(flat: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
    sizes = [math.prod(s) for s in shapes]
    return [c.view(s).clone() for c, s in zip(flat.split(sizes), shapes)]


def _check_scores(scores: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty dict {layer name: tensor} (see lib.pruning.score)")
    for name, s in scores.items():
        if not torch.is_tensor(s):
            raise ValueError(f"score for {name!r} is a {type(s).__name__}, not a tensor")
        if s.is_floating_point() and bool(torch.isnan(s).any()):
            raise ValueError(f"scores for {name!r} contain NaN: the scoring pass diverged; check the batches and the model")


def global_mask(scores: Mapping[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Keep exactly ``floor(density * N)`` weights with the largest scores, over all layers.

    ``N`` is the total number of scored weights. Ties at the threshold are broken by model
    order: the earlier layer (in ``scores`` order), then the earlier row-major position.
    ``-inf`` scores are kept only if fewer than ``floor(density * N)`` scores are larger.
    Returns CPU bool masks with the keys and shapes of ``scores``.
    """
    density = check_density(density)
    _check_scores(scores)
    names = list(scores)
    device = scores[names[0]].device
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in scores.values()) else torch.float32
    shapes = [scores[n].shape for n in names]
    if density == 1.0:  # every weight kept: no need to look at the values
        return {n: torch.ones(s, dtype=torch.bool) for n, s in zip(names, shapes)}
    flat = torch.cat([scores[n].detach().reshape(-1).to(device=device, dtype=dtype) for n in names])
    keep = _top_k_flags(flat, kept_count(flat.numel(), density))
    del flat
    return dict(zip(names, _split(keep.cpu(), shapes)))


masks_from_scores = global_mask


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _scoring_view(model: nn.Module):
    """The model in eval mode with dense weights (any pruning lifted); everything restored after."""
    modes = {m: m.training for m in model.modules()}
    pruned = {n: m for n, m in prunable_layers(model).items() if hasattr(m, "weight_orig")}
    old_masks = {n: m.weight_mask.detach().clone() for n, m in pruned.items()}
    for module in pruned.values():
        _unprune(module)
    model.eval()
    try:
        yield
    finally:
        for name, module in pruned.items():
            torch_prune.custom_from_mask(module, "weight", old_masks[name])
        for m, mode in modes.items():
            m.training = mode


def _tensors(model: nn.Module, dtype: torch.dtype, absolute: bool = False, raw=()) -> dict[str, torch.Tensor]:
    """Detached parameters and buffers of ``model`` by name, floats cast to ``dtype``
    (``absolute``: and replaced by their absolute values, except those named in ``raw``)."""
    out = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach()
        if t.is_floating_point():
            t = t.to(dtype)
            if absolute and name not in raw:
                t = t.abs()
        out[name] = t
    return out


def _batches(batches, method: str):
    if batches is None:
        raise ValueError(f"{method} needs training batches: pass batches=[(x, y), ...]")
    if isinstance(batches, (tuple, list)) and len(batches) == 2 and torch.is_tensor(batches[0]) and batches[0].dim() > 1:
        batches = [tuple(batches)]  # a single (x, y) pair
    if iter(batches) is batches:  # a generator or iterator: read it once, reuse it
        batches = list(batches)
    return batches


def _loss(model, tensors, batch, dtype, device, temperature=1.0):
    x, y = batch[0], batch[1]
    out = torch.func.functional_call(model, tensors, (x.to(device=device, dtype=dtype),))
    return F.cross_entropy(out / temperature, y.to(device))


def _gradient(model, tensors, weights: dict, batches, dtype, device, method, temperature=1.0):
    """Gradient of the summed per-batch mean loss w.r.t. ``weights`` (leaf tensors)."""
    names = list(weights)
    params = dict(tensors)
    params.update({f"{n}.weight": weights[n] for n in names})
    total, seen = None, 0
    for batch in batches:
        g = torch.autograd.grad(_loss(model, params, batch, dtype, device, temperature), [weights[n] for n in names])
        total = list(g) if total is None else [a.add_(b) for a, b in zip(total, g)]
        seen += 1
    if seen == 0:
        raise ValueError(f"{method} got an empty list of batches: pass batches=[(x, y), ...]")
    return dict(zip(names, total))


def _score_rand(model, seed):
    gen = torch.Generator(device="cpu")
    gen.manual_seed(stream_seed(seed, "Rand"))  # not the init's stream: see stream_seed
    return {n: torch.randn(m.weight.shape, generator=gen) for n, m in prunable_layers(model).items()}


def _score_snip(model, batches, dtype, device):
    tensors = _tensors(model, dtype)
    names = list(prunable_layers(model))
    weights = {n: tensors[f"{n}.weight"].requires_grad_() for n in names}
    grads = _gradient(model, tensors, weights, batches, dtype, device, "SNIP")
    scores = {n: (grads[n] * weights[n].detach()).abs_() for n in names}
    total = sum(float(s.sum()) for s in scores.values())
    if total > 0:
        scores = {n: s.div_(total) for n, s in scores.items()}
    return scores


def _score_grasp(model, batches, dtype, device, temperature=200.0):
    tensors = _tensors(model, dtype)
    names = list(prunable_layers(model))
    weights = {n: tensors[f"{n}.weight"].requires_grad_() for n in names}
    g = _gradient(model, tensors, weights, batches, dtype, device, "GraSP", temperature)  # first pass: g
    params = dict(tensors)
    params.update({f"{n}.weight": weights[n] for n in names})
    leaves = [weights[n] for n in names]
    hg = None
    for batch in batches:  # second pass: Hessian-gradient product H g, batch by batch
        grad_f = torch.autograd.grad(_loss(model, params, batch, dtype, device, temperature), leaves, create_graph=True)
        z = sum((g[n] * f).sum() for n, f in zip(names, grad_f))
        h = torch.autograd.grad(z, leaves)
        hg = list(h) if hg is None else [a.add_(b) for a, b in zip(hg, h)]
    scores = {n: hg[i] * weights[n].detach() for i, n in enumerate(names)}
    norm = abs(sum(float(s.sum()) for s in scores.values()))
    if norm > 0:
        scores = {n: s.div_(norm) for n, s in scores.items()}
    return scores  # the reference keeps the LARGEST (Hg)*w


def _rounds(rounds) -> int:
    rounds = int(rounds)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return rounds


class _FlatScores:
    """Scores of all layers in one flat buffer (model order), and the kept flags of a round.

    For iterSNIP, which ranks every weight each round: the kept flags are exactly
    ``global_mask`` of the returned scores, so the final mask can be reproduced from them.
    """

    def __init__(self, names, shapes, dtype, device):
        self.names, self.shapes = names, shapes
        self.sizes = [math.prod(s) for s in shapes]
        self.flat = torch.empty(sum(self.sizes), dtype=dtype, device=device)
        self.views = [v.view(s) for v, s in zip(self.flat.split(self.sizes), shapes)]
        self.keep = torch.ones(self.flat.numel(), dtype=torch.bool, device=device)

    def keep_views(self):
        return [a.view(s) for a, s in zip(self.keep.split(self.sizes), self.shapes)]

    def select(self, method: str, r: int, k: int) -> None:
        """Check finiteness, keep the top ``k`` of all scores (ties to the earliest)."""
        if not math.isfinite(float(self.flat.max())):
            bad = next(n for n, v in zip(self.names, self.views) if not bool(torch.isfinite(v).all()))
            raise FloatingPointError(f"{method} scores of {bad!r} are not finite in round {r}")
        self.keep = _top_k_flags(self.flat, k)

    def scores(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.views))


class _AliveList:
    """A mostly removed layer's alive weights as a list: flat positions and values, or for a
    Linear layer scored by outer products, compressed rows (row pointers, columns, values).

    Scanning a list entry costs about twice a dense one (gathers), so below ``_LIST_BELOW``
    alive a list is cheaper than the whole layer; SynFlow leaves the largest layers (ResNet-34's
    layer4, VGG-16's classifier) a few % alive within tens of rounds. Entries removed since the
    list was compacted are skipped through the alive flags; it is compacted in place (the
    first ``n`` entries are the list) when a third of it is removed.
    """

    def __init__(self, alive: torch.Tensor, w: torch.Tensor, outer: bool):
        pos = alive.reshape(-1).nonzero().squeeze(1)
        self.n = pos.numel()
        self.w = w.reshape(-1)[pos]
        self.width = w.shape[1] if outer else None
        if outer:  # a layer has < 2**31 weights: int32 columns
            self.rowptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
            torch.cumsum(alive.reshape(w.shape[0], -1).sum(1), 0, out=self.rowptr[1:])
            self.cols = (pos % self.width).to(torch.int32)
        else:
            self.pos = pos.to(torch.int32)

    def shrink(self, alive: torch.Tensor, live: int) -> None:
        """Compact once ``live`` (alive in the layer) is under 2/3 of the list."""
        if 3 * live >= 2 * self.n:
            return
        from lib import kernels  # numba's import (~0.3 s) only where SynFlow runs

        flags = alive.reshape(-1).numpy()
        if self.width is None:
            self.n = kernels.compact_listed(self.pos.numpy()[: self.n], self.w.numpy()[: self.n], flags)
        else:
            self.n = kernels.compact_csr(self.rowptr.numpy(), self.cols.numpy(), self.w.numpy(), flags, self.width)

    def positions(self, entries: torch.Tensor) -> torch.Tensor:
        """Flat positions (int64) of list entries ``entries``."""
        if self.width is None:
            return self.pos[entries].to(torch.int64)
        rows = torch.searchsorted(self.rowptr[1:], entries, right=True)
        return rows * self.width + self.cols[entries]


class _Groups:
    """A Linear layer whose input repeats over runs of ``size`` columns, its weights sorted per
    run (see :func:`lib.kernels.scan_grouped`): a scan reads one value per run, then walks the
    sorted run only while its scores are in the band, instead of reading ``size`` scores.

    VGG-16's classifier reads a 512x1x1 feature map average-pooled to 7x7, so its 25088 inputs
    are 512 values repeated 49 times: its 103M scores are scanned as 2M sorted runs. The sorted
    copy costs 5 bytes a weight.
    """

    def __init__(self, w: torch.Tensor, size: int):
        rows = w.reshape(-1, size).numpy()
        self.size = size
        self.ws = np.empty(rows.shape, dtype=rows.dtype)  # each run's weights, ascending (removed: before first, or NaN)
        self.perm = np.empty(rows.shape, dtype=np.uint8)  # their offsets in the run
        chunk = 1 << 16  # runs sorted at a time: the keys take 8 bytes a weight
        if rows.dtype == np.float32:
            from lib import kernels  # numba's import (~0.3 s) only where SynFlow runs

            buffer = np.empty(min(chunk, rows.shape[0]) * size, dtype=np.uint64)  # reused: no new pages per chunk
        for r in range(0, rows.shape[0], chunk):
            block, out = rows[r : r + chunk], slice(r, r + chunk)
            if block.dtype == np.float32:  # w >= 0 orders as its bits: sort integer keys (4x argsort's pace)
                keys = buffer[: block.size].reshape(block.shape)
                kernels.run_keys(block.reshape(-1), size, keys.reshape(-1))
                keys.sort(axis=1)
                kernels.run_split(keys.reshape(-1), self.ws[out].reshape(-1), self.perm[out].reshape(-1))
            else:
                order = block.argsort(axis=1, kind="stable")
                self.perm[out] = order
                self.ws[out] = np.take_along_axis(block, order, 1)
        self.ws, self.perm = self.ws.reshape(-1), self.perm.reshape(-1)
        self.first = np.zeros(rows.shape[0], dtype=np.uint8)
        self.wfirst = self.ws[::size].copy()
        self.wmax = w.amax(1).numpy()  # a row's largest initial weight bounds its scores (range check)

    @staticmethod
    def run_length(x: np.ndarray) -> int:
        """The largest ``G`` such that ``x`` is made of runs of ``G`` equal values (1: none)."""
        edges = np.flatnonzero(x[1:] != x[:-1]) + 1
        return int(np.gcd.reduce(np.diff(np.concatenate(([0], edges, [x.size])))))

    def locate(self, positions: np.ndarray) -> np.ndarray:
        """The index in ``ws`` of the weights at layer ``positions``."""
        base = positions - positions % self.size
        runs = self.perm.reshape(-1, self.size)[base // self.size]
        return base + np.argmax(runs == (positions - base)[:, None], axis=1)

    def values(self, x: np.ndarray) -> np.ndarray | None:
        """One input value per run, or None if ``x`` no longer repeats over every run."""
        xg = x[:: self.size]
        return xg if bool((x.reshape(-1, self.size) == xg[:, None]).all()) else None


class _Band:
    """The positions (in their layer) and scores one round's scans collected, with room to grow."""

    def __init__(self, dtype):
        self.idx = np.empty(_COLLECT, dtype=np.int64)
        self.aux = np.empty(_COLLECT, dtype=np.int64)  # a grouped layer's entries: their index in the sorted runs
        self.val = np.empty(_COLLECT, dtype=dtype)
        self.c = 0

    def grow(self) -> None:
        for name in ("idx", "aux", "val"):
            old = getattr(self, name)
            new = np.empty(2 * old.size, dtype=old.dtype)
            new[: self.c] = old[: self.c]
            setattr(self, name, new)


class _LayerScores:
    """One layer's SynFlow scores in a round, computed where they are read (:mod:`lib.kernels`).

    ``g`` is the layer's weight gradient (``w``'s shape), or for a layer tapped by
    :class:`_OuterTaps` its output gradient (``out x P``), with ``x`` its input as the gradient's
    columns see it (``P x in``), both made ``>= 0`` where ``P = 1``: the scores are then
    ``|g @ x|_ij w_ij``, summed and rounded exactly as autograd's gradient times ``w`` (``>= 0``)
    is, never materialised.
    ``listed``: the layer's :class:`_AliveList`, if it has one; ``groups``: its :class:`_Groups`,
    if it has them (used while ``x`` still repeats over them).
    """

    def __init__(self, g, w, alive, x=None, listed=None, groups=None):
        self.g, self.w, self.alive, self.x, self.listed, self.groups = g, w, alive, x, listed, groups
        self.xg = None if groups is None else groups.values(x.numpy()[0])

    @property
    def grouped(self) -> bool:
        return self.xg is not None

    def write(self, out: torch.Tensor) -> None:
        """Every score into ``out`` (of ``w``'s shape), ``-inf`` where the weight was removed."""
        from lib import kernels  # numba's import (~0.3 s) only where SynFlow runs

        w, alive, g, x = self._arrays
        if x is None:
            kernels.write_dense(g, w, alive, out.numpy().reshape(-1))
        else:
            kernels.write_outer(g, x, w, alive, out.numpy().reshape(-1))

    @functools.cached_property
    def _arrays(self):
        """(w, alive as uint8, g, x) as flat numpy arrays (``x`` None for a dense layer)."""
        x = None if self.x is None else self.x.numpy()
        g = self.g.numpy() if self.x is not None else self.g.numpy().reshape(-1)
        return self.w.numpy().reshape(-1), self.alive.numpy().reshape(-1).view(np.uint8), g, x

    def scan(self, lo: float, hi: float, band: _Band) -> bool:
        """Append the alive weights scoring in ``[lo, hi)`` to ``band`` (in position order, except
        within a run of a grouped layer); whether every alive score is finite."""
        from lib import kernels  # numba's import (~0.3 s) only where SynFlow runs

        w, alive, g, x = self._arrays
        lst = self.listed
        if self.grouped:
            gr = self.groups
            t = band.val.dtype.type
            lo, hi, big = t(lo), t(hi), t(np.finfo(t).max)
            start, ok = 0, True
            while True:
                band.c, start, seen_ok = kernels.scan_grouped(
                    g.reshape(-1), self.xg, gr.wmax, gr.ws, gr.perm, gr.first, gr.wfirst, gr.size,
                    lo, hi, big, start, band.idx, band.aux, band.val, band.c)
                ok &= bool(seen_ok)
                if start >= gr.first.size:
                    return ok or self._alive_finite()
                band.grow()
        if lst is None and x is None:
            kernel, args, n = kernels.scan_dense, (g, w, alive), w.size
        elif lst is None:
            kernel, args, n = kernels.scan_outer, (g, x, w, alive), w.size
        elif lst.width is None:
            kernel, args, n = kernels.scan_listed, (g, lst.pos.numpy()[: lst.n], lst.w.numpy()[: lst.n], alive), lst.n
        else:
            args = (g, x, lst.rowptr.numpy(), lst.cols.numpy()[: lst.n], lst.w.numpy()[: lst.n], alive)
            kernel, n = kernels.scan_csr, lst.n
        t = band.val.dtype.type
        lo, hi, big = t(lo), t(hi), t(np.finfo(t).max)  # compared in the scores' dtype: faster, and exact
        start, ok = 0, True
        while True:
            band.c, start, seen_ok = kernel(*args, lo, hi, big, start, band.idx, band.val, band.c)
            ok &= bool(seen_ok)
            if start >= n:
                return ok or self._alive_finite()
            band.grow()

    def sample(self, first: int, step: int, out: np.ndarray, c: int) -> int:
        """Append the alive scores at every ``step``-th position from ``first`` (of the layer, or
        of its list) to ``out`` from ``c``; the new count."""
        from lib import kernels  # numba's import (~0.3 s) only where SynFlow runs

        w, alive, g, x = self._arrays
        lst = self.listed
        if lst is None and x is None:
            return kernels.sample_dense(g, w, alive, first, step, out, c)
        if lst is None:
            return kernels.sample_outer(g, x, w, alive, first, step, out, c)
        wl = lst.w.numpy()[: lst.n]
        if lst.width is None:
            return kernels.sample_listed(g, lst.pos.numpy()[: lst.n], wl, alive, first, step, out, c)
        return kernels.sample_csr(g, x, lst.rowptr.numpy(), lst.cols.numpy()[: lst.n], wl, alive, first, step, out, c)

    def _reversed_call(self):
        """The ``collect_*`` kernel reading this layer from its end (for :meth:`collect_latest`),
        its arguments before ``(lo, hi, start, big, idx, val)``, how far it runs, and whether the
        positions it gives count from the end (a list of positions gives them as they are)."""
        from lib import kernels  # numba's import (~0.3 s) only where SynFlow runs

        w, alive, g, x = self._arrays
        lst, back = self.listed, slice(None, None, -1)
        if lst is None and x is None:
            return kernels.collect_dense, (g[back], w[back], alive[back]), w.size, True
        if x is not None:  # rows last to first, each read from its end (its terms still in order)
            g, x = g[back], x[:, back]
        if lst is None:
            return kernels.collect_outer, (g, x, w[back], alive[back]), w.size, True
        wl = lst.w.numpy()[: lst.n][back]
        if lst.width is None:
            return kernels.collect_listed_dense, (g, lst.pos.numpy()[: lst.n][back], wl, alive), lst.n, False
        # the same rows, last to first, each read from its end: positions count from the end
        rowptr, cols = lst.n - lst.rowptr.numpy()[::-1], (lst.width - 1) - lst.cols.numpy()[: lst.n][::-1]
        return kernels.collect_csr, (g, x, rowptr, cols, wl, alive[back]), lst.n, True

    def collect_latest(self, lo, hi, limit: int, idx: np.ndarray, val: np.ndarray):
        """Positions of the last ``limit`` (or fewer) alive weights scoring in ``[lo, hi)``, latest
        first (for ties at the threshold), and for a grouped layer their index in its sorted
        runs (else None). ``idx``, ``val``: work buffers."""
        if self.grouped:  # runs come out by score: take them all, then the latest
            band = _Band(val.dtype)
            self.scan(lo, hi, band)
            latest = np.argsort(band.idx[: band.c])[::-1][:limit]
            return band.idx[latest], band.aux[latest]
        kernel, args, n, flip = self._reversed_call()
        t = val.dtype.type
        lo, hi, big = t(lo), t(hi), t(np.finfo(t).max)
        parts, start, got = [], 0, 0
        while start < n and got < limit:
            room = min(len(idx), limit - got)
            c, start, _ = kernel(*args, lo, hi, start, big, idx[:room], val[:room])
            got += c
            parts.append(idx[:c].copy())
        positions = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return ((self.w.numel() - 1) - positions if flip else positions), None

    def _alive_finite(self) -> bool:
        """Whether every alive score is finite (a score above the dtype's range, or NaN, was
        seen: it may belong to a removed weight, whose gradient can be anything)."""
        scores = torch.empty_like(self.w)
        self.write(scores)
        return bool(torch.isfinite(scores[self.alive]).all())


class _Survivors:
    """The weights SynFlow has not removed, and the exact choice of those to remove next.

    The masked weights of all layers live in one flat buffer (a removed weight is 0, which
    is how it leaves the network) beside their alive flags. Each round drops exactly the
    weights a global top-k over the alive scores would not keep: the lowest, ties at the
    threshold dropping the LATEST positions (so the earliest are kept, as in ``global_mask``).
    No sort and no copy of the scores: a strided sample brackets the threshold from above,
    one compiled scan per layer (:mod:`lib.kernels`) collects the alive scores below the
    bracket (a few % of them) and checks that all are finite, and the exact threshold is the
    k-th value among those; a bracket that turns out too low is widened. Layers mostly
    removed are scanned through an :class:`_AliveList`; a Linear layer whose input repeats
    over runs of columns, through its :class:`_Groups`.
    """

    def __init__(self, names, weights, device, absolute: bool = False):
        self.names, self.shapes = names, [w.shape for w in weights]
        self.sizes = [w.numel() for w in weights]
        self.offsets = [0]
        for s in self.sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.n = self.offsets[-1]
        self.flat = torch.empty(self.n, dtype=weights[0].dtype)  # the selection runs on the CPU
        for w, v in zip(weights, self.flat.split(self.sizes)):  # one pass a weight (no cat, then abs)
            if absolute:
                torch.abs(w.detach().reshape(-1).cpu(), out=v)
            else:
                v.copy_(w.detach().reshape(-1))
        self.weights = [v.view(s) for v, s in zip(self.flat.split(self.sizes), self.shapes)]
        # the network's copy, on its device (the same tensors on the CPU)
        self.device_flat = self.flat if device.type == "cpu" else self.flat.to(device)
        self.device_weights = [v.view(s) for v, s in zip(self.device_flat.split(self.sizes), self.shapes)]
        self.alive = torch.ones(self.n, dtype=torch.bool)
        self.alive_views = [a.view(s) for a, s in zip(self.alive.split(self.sizes), self.shapes)]
        self.count = self.n
        self.layer_alive = list(self.sizes)
        self.lists: list[_AliveList | None] = [None] * len(names)
        self.groups: list[_Groups | None] = [None] * len(names)
        self.outer = [False] * len(names)  # scored by outer products (set by layer())
        self.idx = np.empty(_COLLECT, dtype=np.int64)
        self.val = np.empty(_COLLECT, dtype=self.flat.numpy().dtype)
        self.band = _Band(self.val.dtype)
        self.runs = [False] * len(names)  # per layer: scanned by its sorted runs this round

    def layer(self, j: int, g: torch.Tensor, x: torch.Tensor | None = None) -> _LayerScores:
        """Layer ``j``'s scores this round, from its weight gradient (or output gradient and input)."""
        first = x is not None and not self.outer[j]  # its first round scored by outer products
        self.outer[j] = x is not None
        w, alive = self._matrix(j)
        if first and self.sizes[j] >= _GROUPED_FROM and x.shape[0] == 1:
            run = _Groups.run_length(x.numpy()[0])
            if 4 <= run <= 255:
                self.groups[j] = _Groups(w, run)
        return _LayerScores(g, w, alive, x, self.lists[j], self.groups[j])

    def _matrix(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``j``'s weights and alive flags, as (outputs, inputs) for an outer-product layer
        (a convolution's kernel flattened, as its unfolded input is)."""
        if not self.outer[j]:
            return self.weights[j], self.alive_views[j]
        rows = self.shapes[j][0]
        return self.weights[j].view(rows, -1), self.alive_views[j].view(rows, -1)

    def _collect(self, sources, lo, hi) -> list[tuple[int, int]]:
        """Scan every layer for the alive scores in ``[lo, hi)`` into ``self.band`` (emptied
        first); each layer's ``(first, end)`` in it. Raises ``FloatingPointError`` naming the
        first layer with an alive score that is not finite."""
        self.band.c = 0
        self.runs = [src.grouped for src in sources]  # whose band entries carry sorted-run indices
        spans = []
        for name, src in zip(self.names, sources):
            c0 = self.band.c
            if not src.scan(lo, hi, self.band):
                raise FloatingPointError(f"SynFlow scores of {name!r} are not finite")
            spans.append((c0, self.band.c))
        return spans

    def scores(self, sources) -> dict[str, torch.Tensor]:
        """The scores of this round, weights removed in earlier rounds at ``-inf``."""
        out = torch.empty(self.n, dtype=self.flat.dtype, device=self.flat.device)
        views = [v.view(s) for v, s in zip(out.split(self.sizes), self.shapes)]
        for src, v in zip(sources, views):
            src.write(v)
        return dict(zip(self.names, views))

    def _sample(self, sources) -> np.ndarray:
        """Scores of about ``_ROUND_SAMPLE`` alive weights, evenly strided over each layer (or its
        list of alive weights), unsorted."""
        step = max(1, self.count // _ROUND_SAMPLE)
        while step > 1 and any(step % p == 0 for p in (2, 3, 5, 7)):  # no aliasing with row lengths
            step += 1
        lengths = [size if lst is None else lst.n for size, lst in zip(self.sizes, self.lists)]
        out = np.empty(sum(-(-n // step) for n in lengths), dtype=self.val.dtype)
        c = 0
        for src, n in zip(sources, lengths):
            c = src.sample(min(step // 2, n), step, out, c)
        return out[:c]

    def _drops(self, spans, t=None, tied=None) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per layer, the band's entries (with ``t``: those scoring below ``t`` or flagged in
        ``tied``) as ``(positions, index in the sorted runs or None)``."""
        from lib import kernels  # numba's import (~0.3 s) only where SynFlow runs

        out = []
        for j, (c0, c1) in enumerate(spans):
            idx, aux, val = self.band.idx[c0:c1], self.band.aux[c0:c1], self.band.val[c0:c1]
            if t is None:
                idx, aux = idx.copy(), aux.copy()
            else:
                picked, picked_aux = np.empty(c1 - c0, dtype=np.int64), np.empty(c1 - c0, dtype=np.int64)
                n = kernels.pick(idx, aux, val, tied[c0:c1], val.dtype.type(t), picked, picked_aux)
                idx, aux = picked[:n], picked_aux[:n]
            out.append((idx, aux if self.runs[j] else None))
        return out

    def _tied(self, sources, v, m: int):
        """Per layer, the ``m`` to drop if the threshold is ``v`` (everything below, then the
        latest at ``v``), as :meth:`lowest` gives them; else None.

        For a threshold inside a large mass of equal scores (ResNet-34's layer4 runs at 1x1, so
        8 of its 9 kernel taps score exactly 0): the tied scores are collected from the end,
        only as many as are dropped.
        """
        spans = self._collect(sources, -math.inf, v)
        need = m - self.band.c
        if need < 0:
            return None
        drops = self._drops(spans)
        t = self.val.dtype.type
        above = float(np.nextafter(t(v), t(np.inf)))  # [v, above): exactly v
        for j in reversed(range(len(sources))):
            if need == 0:
                break
            latest, aux = sources[j].collect_latest(float(v), above, need, self.idx, self.val)
            pos, sorted_index = drops[j]
            drops[j] = (np.concatenate([pos, latest]), None if aux is None else np.concatenate([sorted_index, aux]))
            need -= latest.size
        return None if need else drops

    def lowest(self, sources, m: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per layer, the alive weights (``m`` in all) a top-(count - m) would not keep: their
        positions in the layer, and for a grouped layer their index in its sorted runs (else None)."""
        if m <= 0 or m >= self.count:
            self._collect(sources, -math.inf, -math.inf)  # collects nothing; checks that the scores are finite
            if m <= 0:
                return [(np.zeros(0, dtype=np.int64), None) for _ in self.names]
            return [(a.reshape(-1).numpy().nonzero()[0], None) for a in self.alive_views]
        if self.count <= 4 * _ROUND_SAMPLE:
            values, hi = None, math.inf
        else:
            values = self._sample(sources)
            r = values.size
            q = (m + 1) / self.count  # the threshold is the (m+1)-th smallest alive score
            margin = _SIGMAS * math.sqrt(r * q * (1 - q)) + 8
            lo_i, hi_i = math.floor(q * r - margin), math.ceil(q * r + margin)
            if 0 <= lo_i and hi_i < r:
                part = np.partition(values, (lo_i, hi_i))
                if part[lo_i] == part[hi_i]:  # the bracket is one (tied) value
                    drops = self._tied(sources, part[lo_i], m)
                    if drops is not None:
                        return drops
        while True:
            if values is not None:
                i = math.ceil(q * r + margin)
                hi = math.inf
                if i < r:
                    v = np.partition(values, i)[i]
                    above = values[values > v]  # every score tied with v is a candidate
                    if above.size:
                        hi = above.min()
            spans = self._collect(sources, -math.inf, hi)
            if self.band.c > m:  # the (m+1) smallest alive scores are all below hi
                break
            margin *= 16
        idx, vals = self.band.idx[: self.band.c], self.band.val[: self.band.c]
        t = np.partition(vals, m)[m]  # the (m+1)-th smallest: the kept threshold
        drop = np.zeros(vals.size, dtype=np.bool_)  # the ties that go, beside everything below t
        need = m - int(np.count_nonzero(vals < t))
        if need > 0:  # ties at the threshold: the latest positions go
            tied = np.flatnonzero(vals == t)
            for j in reversed(range(len(spans))):
                c0, c1 = spans[j]
                mine = tied[np.searchsorted(tied, c0) : np.searchsorted(tied, c1)]
                if self.runs[j]:  # a grouped scan's entries are not in position order
                    mine = mine[np.argsort(idx[mine], kind="stable")]
                mine = mine[max(0, mine.size - need) :]
                drop[mine] = True
                need -= mine.size
                if need == 0:
                    break
        return self._drops(spans, t, drop)

    def remove(self, drops) -> None:
        """Remove the weights :meth:`lowest` chose (per layer, positions and sorted-run indices)."""
        from lib import kernels  # numba's import (~0.3 s) only where SynFlow runs

        for j, (drop, sorted_index) in enumerate(drops):
            if not drop.size:
                continue
            w, alive = self.weights[j].numpy().reshape(-1), self.alive_views[j].numpy().reshape(-1)
            gr = self.groups[j]
            if gr is None:
                kernels.remove_at(drop, w, alive)
            else:
                if sorted_index is None:  # scanned without its runs this round: find each in its run
                    sorted_index = gr.locate(drop)
                kernels.remove_grouped(drop, sorted_index, w, alive, gr.ws, gr.first, gr.size)
            self.count -= drop.size
            self.layer_alive[j] -= drop.size
            if self.lists[j] is not None:
                self.lists[j].shrink(self.alive_views[j], self.layer_alive[j])
            elif gr is None and self.layer_alive[j] < _LIST_BELOW * self.sizes[j]:
                w, alive = self._matrix(j)
                self.lists[j] = _AliveList(alive, w, self.outer[j])
        if self.device_flat is not self.flat:
            flat = np.concatenate([d + off for (d, _), off in zip(drops, self.offsets)])
            self.device_flat.index_fill_(0, torch.from_numpy(flat).to(self.device_flat.device), 0.0)


class _OuterTaps:
    """Forward hooks that keep the input and output gradient of each layer scored by outer products.

    A Linear layer run once on a batch-1 vector, and a convolution run once at batch 1 to a
    1x1 output (ResNet-34's layer4 at 32x32: 62% of its weights), have a weight gradient that
    is one product per weight: ``g_i x_j``, with ``x`` the input (a convolution's unfolded
    input window: its zero padding gives the exactly-zero gradient of the outer taps). Such a
    layer's gradient is never materialised: its weights take no gradient, and its scores are
    computed where they are read. A convolution to ``P <= _WINDOW_TERMS`` output positions
    (ResNet-34's layer3 at 2x2: 32% of its weights) is scored the same way from its output
    gradient (``out x P``) and unfolded input (``P x in``): a sum of ``P`` products a weight.
    A convolution qualifies only on torch's native ("slow") backend, where the gradient is a
    plain matrix product, and with ``P > 1`` only if :func:`_sums_as_fma` finds that product's
    sums (the BLAS's) are the kernels' on this machine.

    The output gradient comes from a tensor hook registered on the output before any later
    in-place op (VGG's ``ReLU(inplace=True)``): it receives the gradient of the output as the
    layer produced it. ``probe`` records which layers qualify and whether each one's input
    needs gradients.
    """

    def __init__(self, modules: dict[str, nn.Module]):
        self.inputs: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.tapped: set[str] = set()
        self._probe: dict[str, list] | None = None
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    @staticmethod
    def _fits(module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> bool:
        if isinstance(module, nn.Linear):
            return x.dim() == 2 and x.shape[0] == 1
        if type(module).forward is not nn.Conv2d.forward:  # a subclass may change what the weight does
            return False
        terms = output.shape[-2:].numel()
        if x.dim() != 4 or x.shape[0] != 1 or terms > _WINDOW_TERMS or module.groups != 1 \
                or module.padding_mode != "zeros" or isinstance(module.padding, str):
            return False
        backend = torch._C._select_conv_backend(x, module.weight, module.bias, list(module.stride), list(module.padding),
                                                list(module.dilation), False, [0, 0], 1, None)
        if backend != torch._C._ConvBackend.Slow2d:
            return False
        return terms == 1 or _conv_sums_as_fma(module, x.shape, x.dtype)

    @staticmethod
    def _window(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as its weight gradient's columns see it (``P x in``): ``x`` (Linear,
        ``P = 1``), or a convolution's unfolded input, a row per output position, padding included.
        Made ``>= 0`` where ``P = 1`` (``|g x| = |g| |x|``); with ``P > 1`` the signs stay, as
        ``|sum_p g_p x_p|`` needs them."""
        x = x.detach()
        if isinstance(module, nn.Conv2d):
            x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)[0].T
        return (x.abs() if x.shape[0] == 1 else x).contiguous()

    @staticmethod
    def _gradient(g: torch.Tensor) -> torch.Tensor:
        """The output gradient as the weight gradient's rows see it (``out x P``), ``|g|`` where ``P = 1``."""
        g = g.detach().reshape(g.shape[1], -1)
        return g.abs() if g.shape[1] == 1 else g

    def _hook(self, name):
        def forward(module, inputs, output):
            x = inputs[0]
            if self._probe is not None:
                self._probe.setdefault(name, []).append((self._fits(module, x, output), x.requires_grad))
            if name in self.tapped:
                self.inputs[name] = self._window(module, x)
                if output.requires_grad:
                    output.register_hook(lambda g: self.grads.__setitem__(name, self._gradient(g)))

        return forward

    def probe(self, run) -> dict[str, list[tuple[bool, bool]]]:
        """Run ``run()`` once; per tapped layer and call: (whether it fits, whether its input needs grad)."""
        self._probe = {}
        try:
            with torch.enable_grad():
                run()
            return self._probe
        finally:
            self._probe = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _conv_sums_as_fma(module: nn.Conv2d, x_shape, dtype: torch.dtype) -> bool:
    """:func:`_sums_as_fma` for ``module`` run at batch 1 on an input of ``x_shape``, this many threads."""
    return _sums_as_fma(tuple(x_shape), tuple(module.weight.shape), tuple(module.stride), tuple(module.padding),
                        tuple(module.dilation), dtype, torch.get_num_threads())


@functools.lru_cache(maxsize=None)
def _sums_as_fma(x_shape, w_shape, stride, padding, dilation, dtype, threads) -> bool:
    """Whether autograd's weight gradient of this convolution (batch 1, torch's native backend,
    ``threads`` threads) equals :mod:`lib.kernels`' sum of its products bit for bit, on random
    data of its shapes. The BLAS behind it (MKL's sgemm on x86) sums each entry's products in
    order, each fused into the sum; that is checked here, on the machine that runs, not assumed.
    """
    from lib import kernels  # numba's import (~0.3 s) only where SynFlow runs

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=gen, dtype=dtype)  # signed: cancellations show the order
    w = torch.rand(w_shape, generator=gen, dtype=dtype)
    with torch.enable_grad():
        w.requires_grad_()
        out = F.conv2d(x, w, None, stride, padding, dilation)
        g = torch.randn(out.shape, generator=gen, dtype=dtype)
        (grad,) = torch.autograd.grad(out, w, g)
    window = F.unfold(x, w_shape[2:], dilation, padding, stride)[0].T.contiguous()
    ones, alive = np.ones(grad.numel(), dtype=window.numpy().dtype), np.ones(grad.numel(), dtype=np.uint8)
    mine = np.empty_like(ones)  # the scores of weights 1: the gradient's magnitude
    kernels.write_outer(g.reshape(w_shape[0], -1).numpy(), window.numpy(), ones, alive, mine)
    return bool(np.array_equal(mine, grad.abs().reshape(-1).numpy()))


def _score_synflow(model, density, batches, device, rounds=100, progress=True, input_shape=None, readout="sum", dtype=None,
                   masks=False):
    """SynFlow (Tanaka et al. 2020): ``rounds`` rounds of scoring the abs-valued network at input 1.

    ``readout``: R = sum(f(1)) ("sum", the SynFlow paper) or sum(log_softmax(f(1)))
    ("log_softmax", what made the authors' published masks). ``dtype``: by default float32, as
    the authors' code scored, and float64 from the start again if an alive score is not finite
    in float32 (products of |w| along deep paths can overflow it: ~160**30 in a 30-layer MLP);
    a given dtype is used alone. Returns the last round's scores, or with ``masks`` the weights
    that survive the last round (its top-k: what ``global_mask`` of those scores keeps).
    """
    if readout not in SYNFLOW_READOUTS:
        raise ValueError(f"readout must be 'sum' (the SynFlow paper) or 'log_softmax' (the authors' published masks), got {readout!r}")
    if dtype is None:
        try:
            return _synflow_rounds(model, density, batches, device, rounds, progress, input_shape, readout, torch.float32, masks)
        except FloatingPointError:
            pass  # float32 overflowed: the same rounds in float64
        dtype = torch.float64
    return _synflow_rounds(model, density, batches, device, rounds, progress, input_shape, readout, dtype, masks)


def _synflow_rounds(model, density, batches, device, rounds, progress, input_shape, readout, dtype, masks=False):
    layers = prunable_layers(model)
    names = list(layers)
    if input_shape is None:
        if batches is not None:
            input_shape = tuple(next(iter(batches))[0].shape[1:])
        else:
            m0 = layers[names[0]]
            input_shape = (m0.in_channels, 32, 32) if isinstance(m0, nn.Conv2d) else (m0.in_features,)
    weight_names = {f"{n}.weight" for n in names}  # copied once, into the survivors' buffer, and made |.| there
    tensors = _tensors(model, dtype, absolute=True, raw=weight_names)  # every parameter AND buffer replaced by |.|
    live = _Survivors(names, [tensors.pop(f"{n}.weight") for n in names], device, absolute=True)  # private copies, masked
    x = torch.ones((1, *input_shape), dtype=dtype, device=device)
    taps = _OuterTaps({n: m for n, m in layers.items() if isinstance(m, (nn.Linear, nn.Conv2d))})
    try:
        weights = live.device_weights
        leaves = {n: w.detach().requires_grad_() for n, w in zip(names, weights) if not isinstance(layers[n], nn.Linear)}
        tensors.update({f"{n}.weight": leaves.get(n, w) for n, w in zip(names, weights)})
        run = functools.partial(torch.func.functional_call, model, tensors, (x,))
        calls = taps.probe(run)  # convolutions are leaves while probed
        outer = {n for n, c in calls.items() if len(c) == 1 and c[0][0]}
        for n, w in zip(names, weights):
            if n in outer:  # scored by outer products: its weights take no gradient
                leaves.pop(n, None)
                tensors[f"{n}.weight"] = w
            elif n not in leaves:  # a Linear layer run twice, or on more than a vector
                leaves[n] = tensors[f"{n}.weight"] = w.detach().requires_grad_()
        # An outer layer with no leaf upstream needs the input to take a gradient, or its output
        # has none to hook. The probe's answer holds for the final leaves too: if a layer's
        # input lost its gradient with them, the first outer layer upstream of it had none
        # while probed (nothing before it was a leaf then either).
        input_grad = any(not calls[n][0][1] for n in outer)
        taps.tapped = outer
        inputs = list(leaves.values()) + ([x.requires_grad_()] if input_grad else [])
        scores = None
        for r in bar(range(1, rounds + 1), enabled=progress, desc="SynFlow rounds", leave=False):
            taps.inputs.clear()
            taps.grads.clear()
            out = torch.func.functional_call(model, tensors, (x,))
            R = out.sum() if readout == "sum" else F.log_softmax(out, dim=1).sum()
            grads = dict(zip(leaves, torch.autograd.grad(R, inputs, allow_unused=True)))
            del R, out
            sources = []
            for j, (n, w) in enumerate(zip(names, live.weights)):
                if n in outer:
                    g = taps.grads.get(n, w.new_zeros(w.shape[0], taps.inputs[n].shape[0]))  # none: it does not reach R
                    sources.append(live.layer(j, g.cpu(), taps.inputs[n].cpu()))
                else:
                    sources.append(live.layer(j, grads[n].cpu() if grads[n] is not None else torch.zeros_like(w)))
            del grads
            k = kept_count(live.n, density ** (r / rounds))
            if r == rounds and not masks:
                scores = live.scores(sources)
            try:
                live.remove(live.lowest(sources, live.count - k))
            except FloatingPointError as err:
                raise FloatingPointError(f"{err} in round {r}") from None
    finally:
        taps.remove()
    if masks:  # the survivors are global_mask of the last round's scores
        return {n: a.clone() for n, a in zip(names, live.alive_views)}
    return scores


def _score_itersnip(model, density, batches, dtype, device, rounds=100, progress=True):
    """iterSNIP as the reference runs it: every weight is scored every round, so removed ones can return.

    Round r scores ``|dL/dm| = |dL/d(w*m) * w|``: the gradient of the (summed per-batch mean)
    loss of the network with masked weights ``w*m``, times the DENSE initial weights ``w``;
    the top ``floor(density**(r/rounds) * N)`` of all weights make the next mask.
    """
    tensors = _tensors(model, dtype)
    names = list(prunable_layers(model))
    dense = {n: tensors[f"{n}.weight"] for n in names}
    masked = {n: w.clone().requires_grad_() for n, w in dense.items()}  # private copies, w * m
    buf = _FlatScores(names, [w.shape for w in dense.values()], dtype, device)
    for r in bar(range(1, rounds + 1), enabled=progress, desc="iterSNIP rounds", leave=False):
        grads = _gradient(model, tensors, masked, batches, dtype, device, "iterSNIP")
        for n, v in zip(names, buf.views):
            torch.mul(grads[n], dense[n], out=v).abs_()
        del grads
        buf.select("iterSNIP", r, kept_count(buf.flat.numel(), density ** (r / rounds)))
        with torch.no_grad():
            for n, keep in zip(names, buf.keep_views()):
                torch.mul(dense[n], keep, out=masked[n])
    return buf.scores()


def score(model: nn.Module, method: str, batches=None, seed: int = 0, density: float | None = None, **options) -> dict[str, torch.Tensor]:
    """Per-weight scores of ``method`` for every prunable layer (keyed by module name; CPU).

    ``batches``: an iterable of ``(x, y)`` training batches (methods with ``needs_data``;
    SynFlow uses only the shape of ``x``). ``seed``: Rand's generator. ``density``: required by
    the iterative methods (SynFlow, iterSNIP), whose scores depend on it. ``options``: those the
    method accepts (:data:`METHODS`), e.g. ``temperature`` (GraSP, 200), ``rounds``
    (SynFlow/iterSNIP, 100), ``progress`` (SynFlow/iterSNIP: a tqdm bar), ``input_shape``
    (SynFlow: one input without the batch dimension; default from the batches, else
    (in_channels, 32, 32)). Dense scores are all ones; ERK has no score.
    The model is left exactly as it was (weights, mode, requires_grad, masks).
    """
    m = method_of(method)
    if m.scorer is None:
        raise ValueError(f"{m.name} has no per-weight score: use prune(model, {m.name!r}, density, seed=...) "
                         f"or compute_masks(model, {m.name!r}, density, seed=...)")
    return _run(m, m.scorer, model, batches, seed, density, options)


def _run(m: "Method", fn: Callable, model: nn.Module, batches, seed: int, density, options: Mapping) -> dict[str, torch.Tensor]:
    """``fn`` (``m``'s scorer or selector) on ``model`` as :func:`score` documents it: options
    and density checked, batches read once, on a scoring view of the model; CPU tensors."""
    m.check_options(options)
    if not m.density_free:
        if density is None:
            raise ValueError(f"{m.name} is iterative and its scores depend on the density: pass density=...")
        density = check_density(density)
    if m.needs_data or batches is not None:
        batches = _batches(batches, m.name)
    call = dict(batches=batches, seed=seed, density=density, **options)
    if not m.needs_weights:  # shapes suffice: the model may live on the meta device
        return fn(model, **call)
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in model.parameters()) else torch.float32
    with _scoring_view(model):
        out = fn(model, dtype=dtype, device=_device(model), **call)
    return {n: s.detach().cpu() for n, s in out.items()}


# --------------------------------------------------------------------------------------------
# ERK
# --------------------------------------------------------------------------------------------


def _shapes(model_or_shapes) -> dict[str, tuple[int, ...]]:
    if isinstance(model_or_shapes, nn.Module):
        return {n: tuple(m.weight.shape) for n, m in prunable_layers(model_or_shapes).items()}
    if isinstance(model_or_shapes, Mapping):
        return {n: tuple(s.shape) if torch.is_tensor(s) else tuple(int(d) for d in s) for n, s in model_or_shapes.items()}
    raise ValueError("pass a model or a dict {layer name: weight shape}")


def erk_densities(model_or_shapes, density: float) -> dict[str, float]:
    """ERK per-layer densities: ``eps * sum(dims) / prod(dims)``, ``eps`` solved for ``density * N``.

    A layer whose density would exceed 1 is made dense (the one with the largest raw ratio
    first, ties together) and ``eps`` re-solved over the others, until none exceeds 1.
    ``model_or_shapes``: a model (its prunable layers) or ``{name: weight shape}``.
    """
    density = check_density(density)
    shapes = _shapes(model_or_shapes)
    n = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: sum(s) / n[k] for k, s in shapes.items()}
    target = density * sum(n.values())
    dense: set[str] = set()
    eps = 0.0
    while len(dense) < len(shapes):
        rest = [k for k in shapes if k not in dense]
        eps = (target - sum(n[k] for k in dense)) / sum(raw[k] * n[k] for k in rest)
        top = max(raw[k] for k in rest)
        if eps * top <= 1.0:
            break
        dense |= {k for k in rest if raw[k] == top}
    return {k: 1.0 if k in dense else min(1.0, eps * raw[k]) for k in shapes}


def erk_masks(model_or_shapes, density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """ERK masks: each weight kept i.i.d. Bernoulli(its layer's ERK density), seeded generator."""
    shapes = _shapes(model_or_shapes)
    dens = erk_densities(shapes, density)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(stream_seed(seed, "ERK"))  # not the init's stream: see stream_seed
    return {k: torch.rand(shapes[k], generator=gen) < dens[k] for k in shapes}


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A pruning method and what the workbook must give it.

    Exactly one of ``scorer`` (per-weight scores, kept globally by :func:`global_mask`) and
    ``draw`` (a direct mask rule) is used by :func:`compute_masks`; ``draw`` wins where both
    exist (Dense scores are all ones, but its mask is only defined at density 1).

    ``scorer(model, *, batches, seed, density, dtype, device, **options)`` returns scores on
    ``model``'s device; ``dtype``/``device`` are passed only when ``needs_weights``.
    ``draw(model, density, seed)`` returns CPU bool masks.
    ``needs_data``: scored on training batches. ``needs_weights``: reads the initial weights
    (otherwise layer shapes suffice, and a model on the ``meta`` device will do).
    ``density_free``: scores do not depend on the density (computed once per seed and reused).
    ``cache_scores``: worth writing to disk (Rand's are cheaper to redraw than to read).
    ``options``: keyword options :func:`score` accepts for it.
    ``select``: optional, the masks straight from the method's own procedure, where that already
    is ``global_mask`` of its scores (SynFlow's survivors of its last round): called like
    ``scorer``, it spares :func:`compute_masks` the scores and their ranking.
    """

    name: str
    scorer: Callable | None = None
    draw: Callable | None = None
    select: Callable | None = None
    needs_data: bool = False
    needs_weights: bool = False
    density_free: bool = True
    cache_scores: bool = False
    options: frozenset[str] = frozenset()

    def check_options(self, options: Mapping) -> None:
        unknown = sorted(set(options) - self.options)
        if unknown:
            accepted = ", ".join(sorted(self.options)) or "none"
            raise TypeError(f"unexpected option(s) {', '.join(unknown)} for {self.name}; accepted: {accepted}")


def _draw_dense(model, density, seed):
    if density != 1.0:
        raise ValueError(f"Dense keeps every weight: pass density=1.0, got {density!r}")
    return {n: torch.ones(m.weight.shape, dtype=torch.bool) for n, m in prunable_layers(model).items()}


_ITERATIVE = frozenset({"rounds", "progress"})

#: Every pruning method by name, in the order figures and tables list them.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("Rand", scorer=lambda model, *, seed, **_: _score_rand(model, seed)),
    Method("ERK", draw=lambda model, density, seed: erk_masks(model, density, seed)),
    Method("SNIP", needs_data=True, needs_weights=True, cache_scores=True,
           scorer=lambda model, *, batches, dtype, device, **_: _score_snip(model, batches, dtype, device)),
    Method("GraSP", needs_data=True, needs_weights=True, cache_scores=True, options=frozenset({"temperature"}),
           scorer=lambda model, *, batches, dtype, device, temperature=200.0, **_:
           _score_grasp(model, batches, dtype, device, float(temperature))),
    Method("SynFlow", needs_weights=True, density_free=False, options=_ITERATIVE | {"input_shape", "readout"},
           scorer=lambda model, *, density, batches, device, rounds=100, progress=True, input_shape=None, readout="sum", **_:
           _score_synflow(model, density, batches, device, _rounds(rounds), bool(progress), input_shape, readout),
           select=lambda model, *, density, batches, device, rounds=100, progress=True, input_shape=None, readout="sum", **_:
           _score_synflow(model, density, batches, device, _rounds(rounds), bool(progress), input_shape, readout, masks=True)),
    Method("iterSNIP", needs_data=True, needs_weights=True, density_free=False, options=_ITERATIVE,
           scorer=lambda model, *, density, batches, dtype, device, rounds=100, progress=True, **_:
           _score_itersnip(model, density, batches, dtype, device, _rounds(rounds), bool(progress))),
    Method("Dense", scorer=lambda model, **_: {n: torch.ones(m.weight.shape) for n, m in prunable_layers(model).items()},
           draw=_draw_dense),
)}


def method_of(name: str) -> Method:
    """The registered :class:`Method` called ``name``, or a one-line error listing the names."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


# --------------------------------------------------------------------------------------------
# Masks on models
# --------------------------------------------------------------------------------------------


def empty_layers(masks: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the layers whose mask keeps no weight (layer collapse)."""
    return [n for n, m in masks.items() if not bool(m.any())]


def _warn_collapse(masks, method: str) -> None:
    empty = empty_layers(masks)
    if empty:
        which = ", ".join(repr(n) for n in empty)
        layer = "layer" if len(empty) == 1 else "layers"
        warnings.warn(f"{method} left {layer} {which} with no weights (layer collapse)", LayerCollapseWarning, stacklevel=3)


def compute_masks(model: nn.Module, method: str, density: float, batches=None, seed: int = 0, scores=None, **options) -> dict[str, torch.Tensor]:
    """The masks (CPU bool) that :func:`prune` would apply, leaving ``model`` untouched.

    Methods with a mask rule draw it (ERK: Bernoulli masks with ``seed``; Dense: everything,
    density 1). The others keep the top ``floor(density * N)`` scores of :func:`score` (or of
    ``scores`` when given: density-free scores computed once, e.g. SNIP at several densities;
    SynFlow without ``scores``: its last round's survivors, which are exactly those).
    A layer left with no weight triggers a :class:`LayerCollapseWarning`. Use this where only
    the masks are wanted (saving them, measuring their graphs): applying masks to a full-size
    VGG-16 costs a second or more of copies.
    """
    density = check_density(density)
    m = method_of(method)
    if m.draw is not None:
        m.check_options(options)
        masks = m.draw(model, density, seed)
    elif scores is None and m.select is not None:
        masks = _run(m, m.select, model, batches, seed, density, options)
    else:
        if scores is None:
            scores = score(model, method, batches=batches, seed=seed, density=density, **options)
        else:
            m.check_options(options)
        masks = global_mask(scores, density)
        validate_masks(model, masks)  # scores handed in may be another model's
    _warn_collapse(masks, method)
    return masks


def prune(model: nn.Module, method: str, density: float, batches=None, seed: int = 0, scores=None, **options) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place at ``density`` with ``method``; return the masks (CPU bool).

    The masks are those of :func:`compute_masks` (same arguments), applied with
    ``torch.nn.utils.prune`` (replacing any previous mask). A layer left with no weight
    triggers a :class:`LayerCollapseWarning`; the mask is still applied and returned.
    """
    masks = compute_masks(model, method, density, batches=batches, seed=seed, scores=scores, **options)
    apply_masks(model, masks)
    return masks


def validate_masks(model: nn.Module, masks) -> None:
    """Raise a one-line ValueError at the first mask that does not fit ``model``.

    Checked in model order: every prunable layer has a mask, of its weight's shape, holding
    bools (or 0/1 values); then no mask names a layer the model lacks.
    """
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks must be a dict {{layer name: bool tensor}}, got {type(masks).__name__}")
    layers = prunable_layers(model)
    for name, module in layers.items():
        if name not in masks:
            raise ValueError(
                f"no mask for layer {name!r}: masks must cover every prunable layer of the model "
                "(lib.models.prunable_layers); was the mask made for another architecture?"
            )
        m = masks[name]
        if not torch.is_tensor(m):
            raise ValueError(f"mask for {name!r} is a {type(m).__name__}, not a tensor: pass bool tensors")
        shape = tuple(module.weight.shape)
        if tuple(m.shape) != shape:
            raise ValueError(
                f"mask for {name!r} has shape {tuple(m.shape)} but the model's weight is {shape}: "
                "was the mask made for another width or architecture?"
            )
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"mask for {name!r} holds values other than 0 and 1: turn scores into masks with lib.pruning.global_mask")
    for name in masks:
        if name not in layers:
            raise ValueError(f"mask for {name!r} matches no prunable layer of the model: was the mask made for another architecture?")


def _unprune(module: nn.Module) -> None:
    """Lift ``torch.nn.utils.prune`` from ``module.weight`` losslessly (weight = weight_orig)."""
    with torch.no_grad():
        module.weight_mask.fill_(1)
    torch_prune.remove(module, "weight")


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Apply ``masks`` with ``torch.nn.utils.prune.custom_from_mask`` on every prunable layer.

    Validates first (nothing is changed if a mask does not fit). A layer already pruned has its
    old mask *replaced*: the reparametrisation is lifted (``weight`` = the dense ``weight_orig``,
    same Parameter object) and the new mask applied, so masks never compound.
    """
    validate_masks(model, masks)
    for name, module in prunable_layers(model).items():
        if hasattr(module, "weight_orig"):
            _unprune(module)
        mask = masks[name].to(device=module.weight.device, dtype=torch.bool)
        torch_prune.custom_from_mask(module, "weight", mask)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_masks`: every pruned layer gets back its dense weight (``weight_orig``)."""
    for module in prunable_layers(model).values():
        if hasattr(module, "weight_orig"):
            _unprune(module)
    return model


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks of a model pruned with ``torch.nn.utils.prune`` (CPU bool; unpruned layers all True)."""
    out = {}
    for name, module in prunable_layers(model).items():
        if hasattr(module, "weight_mask"):
            out[name] = module.weight_mask.detach().to(device="cpu") != 0
        else:
            out[name] = torch.ones(module.weight.shape, dtype=torch.bool)
    return out


def _as_bool_masks(masks, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(masks, Mapping) or not all(torch.is_tensor(m) for m in masks.values()):
        raise ValueError(f"{where} does not hold masks (a dict {{layer name: bool tensor}})")
    out = {}
    for name, m in masks.items():
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"mask for {name!r} in {where} holds values other than 0 and 1")
        out[name] = m.detach().to(device="cpu", dtype=torch.bool).contiguous().clone()
    return out


def save_masks(path: Path | str, masks: Mapping[str, torch.Tensor]) -> Path:
    """Save masks as a ``.pt`` file of CPU bool tensors, atomically."""
    return save_torch(_as_bool_masks(masks, "masks"), path)


def load_masks(path: Path | str, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Load masks saved by :func:`save_masks`; with ``model``, check they fit it (validate_masks)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, TypeError) as err:
        # torch.load reports a file that is not a torch file in many ways (``KeyError: 101``
        # for a text file); say what the file should have been instead.
        raise ValueError(f"{path} is not a mask file ({type(err).__name__} while reading it): pass a file "
                         "written by lib.pruning.save_masks (torch.save of {layer name: bool tensor})") from None
    masks = _as_bool_masks(content, str(path))
    if model is not None:
        validate_masks(model, masks)
    return masks


def layer_densities(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of weights kept in each layer."""
    return {n: int(m.count_nonzero()) / m.numel() for n, m in masks.items()}


def overall_density(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of all masked weights kept."""
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    return kept / sum(m.numel() for m in masks.values())
