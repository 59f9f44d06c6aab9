"""Graph metrics of pruned layers: the Ramanujan gap, IMDB and NaRC.

This module owns the paper's metrics, computed exactly as ``shared/spec/metrics.md`` states
the reference conventions (which differ from the paper's printed formulas; the README lists
where). A layer's mask is read as a bipartite graph: left vertices are the unfolded inputs
(``in * kh * kw``), right vertices the outputs, an edge is a kept weight.

Only the two largest singular values ``s1 >= s2`` of the 0/1 biadjacency matrix are needed
(the adjacency spectrum is ``±s_i``), so no ``(|L|+|R|)``-square matrix and no graph library
is involved. How they are found depends on the matrix's shape (:func:`top2_singular_values`):

* the Gram matrix of the *smaller* side is formed exactly (0/1 products summed in int32, or
  in float32, are exact: every partial sum is an integer below 2**24), in whichever of an int8
  or a float32 GEMM is faster on this CPU (:func:`gemm_dtype`), then
* its top two eigenvalues come from a dense symmetric eigensolver when it is small, or from
  Lanczos (ARPACK) on the dense Gram when it is large;
* ``solver="sparse"`` instead runs Lanczos directly on the sparse matrix (``svds``), which is
  the cheaper choice only for huge, very sparse matrices and serves as an independent check.

IMDB's degree classes are contiguous slices of one column permutation sorted by degree, so the
grouping, degrees and neighbourhoods are computed once per layer and shared by all classes.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from .progress import bar

# Bump when a metric's definition or computed values change: the workbook's metrics cache
# file names carry it (lib.store), so a new metric recomputes the metrics and nothing else.
METRICS_VERSION = 1

METRICS = (
    "n_left", "n_right", "edges", "d_left", "d_right",
    "mu0", "mu_hat", "delta_s", "delta_r", "delta_r_norm",
    "imdb", "imdb_norm", "narc",
)
EXTRA = ("size_left", "size_right", "layer_density", "imdb_classes", "delta_s_imdb")

# A degree-d class of left vertices counts for IMDB only with at least this many vertices,
# and every graph (layer or class) needs average degrees >= MIN_DEGREE (metrics.md §2-3).
MIN_CLASS_SIZE = 3
MIN_DEGREE = 3
# Gram matrices up to this order go to LAPACK's dense eigensolver; larger ones to Lanczos, whose
# cost grows as order**2 per iteration instead of order**3 (crossover measured on 2 cores).
DENSE_EIG_MAX = 300


# Below this many matrix entries a GEMM or eigensolve is faster on one thread: waking a thread
# pool costs more than the work, and under load (a shared 2-core machine) far more.
SMALL_WORK = 2**20
# Gram matrices of at least twice this order are formed block by block, upper triangle only.
GRAM_BLOCK = 512


@contextlib.contextmanager
def _threads(small: bool):
    """Run the block on one thread if ``small``; restore the thread count afterwards."""
    if not small:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- linear algebra
@functools.cache
def gemm_dtype() -> torch.dtype:
    """The faster exact GEMM for 0/1 Gram matrices on this CPU: ``torch.int8`` or ``torch.float32``.

    An int8 GEMM (``torch._int_mm``, int32 accumulation) is several times faster than float32
    where the CPU has int8 dot-product instructions (AVX512-VNNI, AMX), and many times
    *slower* where it has not (seen on an AMD EPYC without AVX-512): a 4096 x 25088 layer then
    takes minutes instead of seconds. Both are exact, so a small timing picks one per process.
    """
    x = (torch.rand(128, 1024, generator=torch.Generator().manual_seed(0)) < 0.5)
    xi, xf = x.to(torch.int8), x.to(torch.float32)
    try:
        torch._int_mm(xi, xi.T.contiguous())  # warm-up, and private API: may be missing
    except (RuntimeError, AttributeError, NotImplementedError):
        return torch.float32
    timings = {}
    for dtype, a in ((torch.int8, xi), (torch.float32, xf)):
        start = time.perf_counter()
        for _ in range(3):
            torch._int_mm(a, a.T.contiguous()) if dtype == torch.int8 else a @ a.T
        timings[dtype] = time.perf_counter() - start
    return min(timings, key=timings.get)


def _symmetric_product(x: torch.Tensor, block: int = GRAM_BLOCK) -> torch.Tensor:
    """``x @ x.T`` computing only the blocks on and above the diagonal (5/8 of a GEMM's work
    for 8 blocks), mirrored. BLAS's ``syrk`` does this too, but scipy's BLAS runs its own thread
    pool, whose spinning threads then slowed every later torch call many-fold on a 2-core machine."""
    n = x.shape[0]
    out = torch.empty(n, n, dtype=x.dtype)
    for i in range(0, n, block):
        rows = x[i:i + block]
        right = x[i:]  # blocks (i, j >= i) in one GEMM
        prod = rows @ right.T
        out[i:i + block, i:] = prod
        out[i:, i:i + block] = prod.T
    return out


def _gram(x: torch.Tensor) -> torch.Tensor:
    """Exact ``x @ x.T`` of a 0/1 matrix, as float64.

    Exact in int8 with int32 accumulation (< 2**31 terms) and in float32 (every partial sum is
    an integer, and the inner dimension, a layer's fan-in or fan-out, is far below 2**24).
    """
    if x.shape[1] >= 2**24:
        xd = x.to(torch.float64)
        return xd @ xd.T
    small = x.shape[0] * x.shape[0] * x.shape[1] < 64 * SMALL_WORK
    with _threads(small):
        if gemm_dtype() == torch.int8:
            xi = x.to(torch.int8)
            return torch._int_mm(xi, xi.T.contiguous()).to(torch.float64)
        xf = x.to(torch.float32)
        if x.shape[0] < 2 * GRAM_BLOCK:
            return (xf @ xf.T).to(torch.float64)
        return _symmetric_product(xf).to(torch.float64)


def _top2_eig_symmetric(g: torch.Tensor) -> tuple[float, float]:
    """Two largest eigenvalues of a symmetric PSD matrix (float64)."""
    n = g.shape[0]
    if n == 1:
        return float(g[0, 0]), 0.0
    a = g.numpy()
    if n <= DENSE_EIG_MAX:
        with _threads(True):
            w = torch.linalg.eigvalsh(g)
        return float(w[-1]), float(w[-2])
    from scipy.sparse.linalg import ArpackError, eigsh

    # Single-vector Lanczos can miss a second copy of a repeated top eigenvalue (two identical
    # components give lambda1 == lambda2). Deflating the converged top pair exactly and asking
    # for the top of the rest cannot: if lambda1 is repeated, it is still the top there.
    v0 = np.ones(n)  # deterministic start; the Perron vector of a Gram is non-negative
    w1, v1 = eigsh(a, k=1, which="LA", tol=1e-13, v0=v0)
    rest = a - w1[0] * np.outer(v1[:, 0], v1[:, 0])
    if np.abs(rest).max() <= 1e-12 * w1[0]:  # rank one (e.g. complete bipartite): lambda2 = 0
        return float(w1[0]), 0.0
    try:
        w2 = eigsh(rest, k=1, which="LA", return_eigenvectors=False, tol=1e-13, v0=_start(n))
    except ArpackError:  # ARPACK gives up on some near-degenerate operators: solve densely
        w = np.linalg.eigvalsh(a)
        return float(w[-1]), float(w[-2])
    return float(w1[0]), float(w2[0])


def _start(n: int) -> np.ndarray:
    """A fixed pseudo-random Lanczos start vector, so results do not depend on global RNG."""
    return np.random.default_rng(n).standard_normal(n)


def _top2_sparse(x: torch.Tensor) -> tuple[float, float]:
    """``s1, s2`` by Lanczos on the sparse matrix itself (no Gram matrix formed)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    rows, cols = torch.nonzero(x, as_tuple=True)
    a = sp.csr_matrix(
        (np.ones(rows.numel()), (rows.numpy(), cols.numpy())), shape=tuple(x.shape)
    )
    if min(a.shape) <= 2:  # ARPACK needs k < min(shape); tiny cases are dense anyway
        return _top2_dense(x)
    s = np.sort(svds(a, k=2, return_singular_vectors=False, tol=1e-12, random_state=0))
    return float(s[-1]), float(s[-2])


def _top2_dense(x: torch.Tensor) -> tuple[float, float]:
    side = x if x.shape[0] <= x.shape[1] else x.T
    l1, l2 = _top2_eig_symmetric(_gram(side))
    return math.sqrt(max(l1, 0.0)), math.sqrt(max(l2, 0.0))


def top2_singular_values(
    x: torch.Tensor, solver: str = "auto", nnz: int | None = None
) -> tuple[float, float]:
    """The two largest singular values of a 0/1 matrix ``x`` (any orientation), in float64.

    ``solver``: ``"dense"`` (exact Gram of the smaller side, then an eigensolver chosen by its
    order), ``"sparse"`` (Lanczos on the sparse matrix) or ``"auto"`` (dense unless the matrix
    is both large and very sparse, where the Gram product would be mostly wasted work).
    ``nnz``, if the caller knows it, saves a pass over ``x``.
    """
    if solver not in ("auto", "dense", "sparse"):
        raise ValueError(f"unknown solver {solver!r}; choose auto, dense or sparse")
    if x.numel() == 0 or min(x.shape) == 0:
        return 0.0, 0.0
    if min(x.shape) == 1:
        return math.sqrt(float(x.sum())), 0.0
    if solver == "auto":
        small, large = sorted(x.shape)
        nnz = int(x.sum()) if nnz is None else nnz
        # Dense Gram costs small**2 * large multiply-adds in fast int8 GEMM; sparse Lanczos
        # costs ~2 * nnz per iteration, a few hundred iterations, at much lower throughput.
        solver = "sparse" if small > 8192 and nnz * 2000 < small * small * large else "dense"
    return _top2_sparse(x) if solver == "sparse" else _top2_dense(x)


# --------------------------------------------------------------------------- one layer
def biadjacency(mask: torch.Tensor) -> torch.Tensor:
    """The 0/1 biadjacency matrix ``B`` (``|L| x |R|``) of a weight mask, as bool.

    ``mask`` has the weight's shape: ``(out, in)`` or ``(out, in, kh, kw)``.
    """
    mask = torch.as_tensor(mask)
    if mask.dim() < 2:
        raise ValueError(
            f"a layer mask needs at least 2 dimensions (out, in, ...), got shape {tuple(mask.shape)}"
        )
    mask = mask.detach().to("cpu").reshape(mask.shape[0], -1)
    return (mask if mask.dtype == torch.bool else mask.ne(0)).T


def _nan_metrics() -> dict:
    return {k: math.nan for k in METRICS + EXTRA}


def _imdb(b: torch.Tensor, deg_left: torch.Tensor, solver: str) -> dict:
    """IMDB over the d-left-regular subgraphs ``K_d`` (metrics.md §3).

    ``b`` holds only non-isolated vertices (rows: left, columns: right).
    """
    order = torch.argsort(deg_left, stable=True)
    sorted_deg = deg_left[order]
    values, counts = torch.unique_consecutive(sorted_deg, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    gaps, gaps_norm, gaps_s = [], [], []
    for d, n_d, start in zip(values.tolist(), counts.tolist(), starts.tolist()):
        if d < MIN_DEGREE or n_d < MIN_CLASS_SIZE:
            continue
        rows = b[order[start : start + n_d]]
        rows = rows[:, rows.amax(0) > 0]  # drop right vertices isolated in K_d
        n_right = rows.shape[1]
        d_right = d * n_d / n_right
        if d_right < MIN_DEGREE:
            continue
        s1, s2 = top2_singular_values(rows, solver, nnz=d * n_d)
        bound = math.sqrt(d - 1) + math.sqrt(d_right - 1)
        gaps.append(bound - s2)
        gaps_norm.append((bound - s2) / bound)
        gaps_s.append(2 * math.sqrt(s1 - 1) - s2)
    if not gaps:
        return {"imdb": math.nan, "imdb_norm": math.nan, "delta_s_imdb": math.nan, "imdb_classes": 0.0}
    return {
        "imdb": float(np.mean(gaps)),
        "imdb_norm": float(np.mean(gaps_norm)),
        "delta_s_imdb": float(np.mean(gaps_s)),
        "imdb_classes": float(len(gaps)),
    }


def layer_metrics(mask: torch.Tensor, solver: str = "auto") -> dict:
    """All graph metrics of one layer's mask, as a dict of floats (NaN where undefined).

    Keys: ``n_left, n_right`` (non-isolated vertices), ``edges``, ``d_left, d_right`` (their
    average degrees), ``mu0 = s1(B)``, ``mu_hat = s2(B)``, ``delta_s``, ``delta_r``,
    ``delta_r_norm``, ``imdb``, ``imdb_norm``, ``narc``; and ``size_left, size_right``
    (``|L|, |R|`` with isolated vertices), ``layer_density``, ``imdb_classes`` (how many
    ``K_d`` counted) and ``delta_s_imdb`` (the IMDB loop applied to ``delta_s``).

    The whole-layer metrics exist only when ``d_left >= 3`` and ``d_right >= 3``; IMDB has its
    own rule (metrics.md §2-3). Isolated vertices are dropped first; only NaRC's normalisation
    uses the full ``|L| * |R|``.
    """
    # int8 0/1: sums and integer GEMMs on it are fast and exact (bool sums are slow in torch).
    b = biadjacency(mask).to(torch.int8).contiguous()  # rows: left vertices
    size_left, size_right = b.shape
    out = _nan_metrics()
    out.update(size_left=float(size_left), size_right=float(size_right))
    # int32 accumulation is exact (a degree is below 2**31) and twice as fast as int64 here.
    deg_left = b.sum(1, dtype=torch.int32).to(torch.int64)
    deg_right = b.sum(0, dtype=torch.int32).to(torch.int64)
    edges = int(deg_left.sum())
    out["layer_density"] = edges / (size_left * size_right) if b.numel() else math.nan
    out["edges"] = float(edges)
    if edges == 0:
        out.update(n_left=0.0, n_right=0.0, imdb_classes=0.0)
        return out
    keep_left, keep_right = deg_left > 0, deg_right > 0
    b = b[keep_left][:, keep_right]
    n_left, n_right = b.shape
    d_left, d_right = edges / n_left, edges / n_right
    out.update(n_left=float(n_left), n_right=float(n_right), d_left=d_left, d_right=d_right)
    out.update(_imdb(b, deg_left[keep_left], solver))
    if d_left < MIN_DEGREE or d_right < MIN_DEGREE:
        return out

    mu0, mu_hat = top2_singular_values(b, solver, nnz=edges)
    bound = math.sqrt(d_left - 1) + math.sqrt(d_right - 1)
    # Reference NaRC: S = all non-isolated left vertices, |E(S, N(S))| counted over both
    # directions of each edge (hence 2E); normalised by the full layer size (metrics.md §3).
    narc = (
        (mu_hat**2 / 4 + 1) * math.sqrt(n_left * n_right)
        - abs(2 * edges - (d_left / size_right) * n_left * n_right)
    ) / (size_left * size_right)
    out.update(
        mu0=mu0,
        mu_hat=mu_hat,
        delta_s=2 * math.sqrt(mu0 - 1) - mu_hat,
        delta_r=bound - mu_hat,
        delta_r_norm=(bound - mu_hat) / bound,
        narc=narc,
    )
    return out


def narc_literal(mask: torch.Tensor, left_subset) -> float:
    """The paper's Eq. 9 taken literally, for a caller-given set ``S`` of left vertices.

    ``sigma = (mu_hat**2/4 + 1) * sqrt(|S| |N(S)|) - | |E(S, N(S))| - d_L/|R| * |S| |N(S)| |``,
    normalised by ``|L| * |R|``, with ``mu_hat`` and ``d_L`` of the whole layer (isolated
    vertices dropped). With ``S`` = all left vertices and no isolated vertices the absolute term
    vanishes, which is why the workbook's default is the reference form (:func:`layer_metrics`).
    """
    b = biadjacency(mask)
    size_left, size_right = b.shape
    s = torch.as_tensor(left_subset, dtype=torch.long).unique()
    if s.numel() == 0 or int(s.min()) < 0 or int(s.max()) >= size_left:
        raise ValueError(f"left_subset must be a non-empty set of indices in [0, {size_left})")
    whole = layer_metrics(mask)
    if math.isnan(whole["mu_hat"]):
        return math.nan
    sub = b[s]
    neighbours = int(sub.any(0).sum())
    edges = int(sub.sum())
    term = abs(edges - whole["d_left"] / size_right * s.numel() * neighbours)
    sigma = (whole["mu_hat"] ** 2 / 4 + 1) * math.sqrt(s.numel() * neighbours) - term
    return sigma / (size_left * size_right)


# --------------------------------------------------------------------------- whole models
def _masks_from(masks_or_model) -> Mapping[str, torch.Tensor]:
    if isinstance(masks_or_model, torch.nn.Module):
        from .models import prunable_layers

        # torch.nn.utils.prune keeps each mask in a ``weight_mask`` buffer; unpruned layers are dense.
        return {name: m.weight_mask.detach().cpu() != 0 if hasattr(m, "weight_mask")
                else torch.ones(m.weight.shape, dtype=torch.bool)
                for name, m in prunable_layers(masks_or_model).items()}
    if isinstance(masks_or_model, Mapping):
        return masks_or_model
    raise TypeError(
        "model_metrics takes a {layer name: mask} mapping or a model pruned with "
        f"torch.nn.utils.prune, got {type(masks_or_model).__name__}"
    )


def model_metrics(masks_or_model, solver: str = "auto", progress: bool = False) -> pd.DataFrame:
    """One row per prunable layer: a ``layer`` column plus every key of :func:`layer_metrics`.

    Accepts ``{layer name: bool mask}`` or a model pruned with ``torch.nn.utils.prune`` (its
    ``weight_mask`` buffers are read; unpruned Conv2d/Linear layers count as dense).
    """
    masks = _masks_from(masks_or_model)
    items = bar(list(masks.items()), enabled=progress, desc="layer metrics", leave=False)
    rows = [{"layer": name, **layer_metrics(mask, solver)} for name, mask in items]
    return pd.DataFrame(rows, columns=["layer", *METRICS, *EXTRA])


SUMMARY_METRICS = (
    "mu0", "mu_hat", "delta_s", "delta_r", "delta_r_norm",
    "imdb", "imdb_norm", "delta_s_imdb", "narc",
)


def summarize(df: pd.DataFrame) -> pd.Series:
    """Model-level aggregates of :func:`model_metrics`: means over the layers where each metric
    is defined, the number of layers, and how many are undefined for the whole-layer metrics
    (``undefined_layers``) and for IMDB (``imdb_undefined_layers``)."""
    out = {m: float(df[m].mean(skipna=True)) if df[m].notna().any() else math.nan for m in SUMMARY_METRICS}
    out["layers"] = int(len(df))
    out["undefined_layers"] = int(df["delta_r"].isna().sum())
    out["imdb_undefined_layers"] = int(df["imdb"].isna().sum())
    out["realized_density"] = float(df["edges"].sum() / (df["size_left"] * df["size_right"]).sum())
    return pd.Series(out)
