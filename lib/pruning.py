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
import math
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

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

_SAMPLE = 100_000  # values sampled to bracket the global threshold on large models (sorting 1M cost more than the band saved)
_CHUNK = 1 << 22


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
    """The ``k``-th largest value of a 1-D tensor (1 <= k <= n), in O(n).

    ``torch.kthvalue`` on 138M values takes ~5 s on 2 cores; instead a strided sample brackets
    the value, and ``kthvalue`` runs on the (small) band between the brackets. The bracket is
    checked by counting, so the answer is exact whatever the sample looks like.
    """
    n = flat.numel()
    if n <= 4 * _SAMPLE:
        return torch.kthvalue(flat, n - k + 1).values
    sample = flat[:: n // _SAMPLE].sort().values
    r = sample.numel()
    pos = r - k * r / n  # ascending position of the k-th largest in the sample
    margin = 1000  # ~6 standard deviations of a sample rank at r = 100k
    while margin < r:
        lo_i, hi_i = math.floor(pos) - margin, math.ceil(pos) + margin
        lo = sample[lo_i] if lo_i > 0 else flat.new_tensor(-math.inf)
        hi = sample[hi_i] if hi_i < r - 1 else flat.new_tensor(math.inf)
        above = int((flat > hi).count_nonzero())
        if bool(lo == hi):  # the bracket is one (tied) value
            if above < k <= int((flat >= lo).count_nonzero()):
                return lo
        else:
            band = flat[(flat >= lo) & (flat <= hi)]
            if above < k <= above + band.numel():
                j = k - above  # the answer is the j-th largest of the band
                if band.numel() < n // 2:
                    return _kth_largest(band, j)
                return torch.kthvalue(band, band.numel() - j + 1).values
        margin *= 16
    return torch.kthvalue(flat, n - k + 1).values


def _top_k_flags(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool flags keeping exactly the ``k`` largest values; ties go to the earliest positions."""
    n = flat.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
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


def _tensors(model: nn.Module, dtype: torch.dtype, absolute: bool = False) -> dict[str, torch.Tensor]:
    """Detached parameters and buffers of ``model`` by name, floats cast to ``dtype``."""
    out = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach()
        if t.is_floating_point():
            t = t.to(dtype)
            if absolute:
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
    """Scores of all layers in one flat buffer (model order), and the alive flags of a round.

    Iterative methods select among all weights with dead ones at ``-inf``: this is exactly
    ``global_mask`` on the returned scores, so the final mask can be reproduced from them.
    """

    def __init__(self, names, shapes, dtype, device):
        self.names, self.shapes = names, shapes
        self.sizes = [math.prod(s) for s in shapes]
        self.flat = torch.empty(sum(self.sizes), dtype=dtype, device=device)
        self.views = [v.view(s) for v, s in zip(self.flat.split(self.sizes), shapes)]
        self.alive = torch.ones(self.flat.numel(), dtype=torch.bool, device=device)

    def alive_views(self):
        return [a.view(s) for a, s in zip(self.alive.split(self.sizes), self.shapes)]

    def select(self, method: str, r: int, k: int) -> None:
        """Dead weights to -inf, check finiteness, keep the top ``k`` as the new alive set."""
        self.flat.masked_fill_(~self.alive, -math.inf)
        top = float(self.flat.max())
        if not math.isfinite(top):
            bad = next(n for n, v in zip(self.names, self.views) if not bool(torch.isfinite(v.max())))
            raise FloatingPointError(f"{method} scores of {bad!r} are not finite in round {r}")
        self.alive = _top_k_flags(self.flat, k)

    def scores(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.views))


def _score_synflow(model, density, batches, device, rounds=100, progress=True, input_shape=None):
    layers = prunable_layers(model)
    names = list(layers)
    if input_shape is None:
        if batches is not None:
            input_shape = tuple(next(iter(batches))[0].shape[1:])
        else:
            m0 = layers[names[0]]
            input_shape = (m0.in_channels, 32, 32) if isinstance(m0, nn.Conv2d) else (m0.in_features,)
    dtype = torch.float64  # products of |w| along deep paths overflow float32
    tensors = _tensors(model, dtype, absolute=True)  # every parameter AND buffer replaced by |.|
    weights = [tensors[f"{n}.weight"].requires_grad_() for n in names]  # private copies (abs)
    buf = _FlatScores(names, [w.shape for w in weights], dtype, device)
    x = torch.ones((1, *input_shape), dtype=dtype, device=device)
    for r in bar(range(1, rounds + 1), enabled=progress, desc="SynFlow rounds", leave=False):
        R = torch.func.functional_call(model, tensors, (x,)).sum()
        grads = torch.autograd.grad(R, weights)
        for g, w, v in zip(grads, weights, buf.views):
            torch.mul(g, w.detach(), out=v).abs_()
        del grads, R
        buf.select("SynFlow", r, kept_count(buf.flat.numel(), density ** (r / rounds)))
        with torch.no_grad():  # removed weights are zero in the next round's network
            for w, a in zip(weights, buf.alive_views()):
                w.masked_fill_(~a, 0.0)
    return buf.scores()


def _score_itersnip(model, density, batches, dtype, device, rounds=100, progress=True):
    tensors = _tensors(model, dtype)
    names = list(prunable_layers(model))
    weights = {n: tensors[f"{n}.weight"].clone().requires_grad_() for n in names}  # private copies
    buf = _FlatScores(names, [w.shape for w in weights.values()], dtype, device)
    for r in bar(range(1, rounds + 1), enabled=progress, desc="iterSNIP rounds", leave=False):
        grads = _gradient(model, tensors, weights, batches, dtype, device, "iterSNIP")
        for n, v in zip(names, buf.views):
            torch.mul(grads[n], weights[n].detach(), out=v).abs_()
        del grads
        buf.select("iterSNIP", r, kept_count(buf.flat.numel(), density ** (r / rounds)))
        with torch.no_grad():
            for w, a in zip(weights.values(), buf.alive_views()):
                w.masked_fill_(~a, 0.0)
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
    m.check_options(options)
    if not m.density_free:
        if density is None:
            raise ValueError(f"{m.name} is iterative and its scores depend on the density: pass density=...")
        density = check_density(density)
    if m.needs_data or batches is not None:
        batches = _batches(batches, m.name)
    call = dict(batches=batches, seed=seed, density=density, **options)
    if not m.needs_weights:  # shapes suffice: the model may live on the meta device
        return m.scorer(model, **call)
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in model.parameters()) else torch.float32
    with _scoring_view(model):
        scores = m.scorer(model, dtype=dtype, device=_device(model), **call)
    return {n: s.detach().cpu() for n, s in scores.items()}


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
    """

    name: str
    scorer: Callable | None = None
    draw: Callable | None = None
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
    Method("SynFlow", needs_weights=True, density_free=False, options=_ITERATIVE | {"input_shape"},
           scorer=lambda model, *, density, batches, device, rounds=100, progress=True, input_shape=None, **_:
           _score_synflow(model, density, batches, device, _rounds(rounds), bool(progress), input_shape)),
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
    ``scores`` when given: density-free scores computed once, e.g. SNIP at several densities).
    A layer left with no weight triggers a :class:`LayerCollapseWarning`. Use this where only
    the masks are wanted (saving them, measuring their graphs): applying masks to a full-size
    VGG-16 costs a second or more of copies.
    """
    density = check_density(density)
    m = method_of(method)
    if m.draw is not None:
        m.check_options(options)
        masks = m.draw(model, density, seed)
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
