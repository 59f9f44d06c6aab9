"""Graph metrics of pruned layers: the Ramanujan gap, IMDB and NaRC.

This module owns the paper's per-layer metrics, computed with the reference conventions of
``shared/spec/metrics.md``, and the linear algebra behind them. A layer's mask is read as a
bipartite graph (left: unfolded inputs ``in * kh * kw``; right: outputs; an edge is a kept
weight) and only the two largest singular values ``s1 >= s2`` of its 0/1 biadjacency matrix
are needed, for the whole layer and for each IMDB degree class.

Two solvers find them: the default ``"auto"`` (Lanczos on the mask or on its exact Gram
matrix, whichever is cheaper; :func:`top2_singular_values`) and ``"exact"`` (the exact Gram
matrix of the smaller side and a LAPACK/ARPACK eigensolver), kept as the oracle the fast path
is tested against. The fast solver's inner loops (products with the mask, bit-packed Grams)
are compiled: :mod:`lib.spectral_kernels` (numba, imported on first use).
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch

from .progress import bar

# Bump when a metric's definition or its computed values change: the workbook's metrics cache
# file names carry it, so a new version recomputes the metrics (and only them).
METRICS_VERSION = 3  # 2: the fast solver (s2 of a rank-one layer is exactly 0, was ~1e-6 of noise);
# 3: compiled products and bit-packed Grams (values move by rounding, ~1e-12 relative)

METRICS = (
    "n_left", "n_right", "edges", "d_left", "d_right",
    "mu0", "mu_hat", "delta_s", "delta_r", "delta_r_norm",
    "imdb", "imdb_norm", "narc",
)
EXTRA = ("size_left", "size_right", "layer_density", "imdb_classes", "delta_s_imdb")
SOLVERS = ("auto", "exact", "sparse")  # "dense" is accepted as the former name of "exact"

# A degree-d class of left vertices counts for IMDB only with at least this many vertices,
# and every graph (layer or class) needs average degrees >= MIN_DEGREE (metrics.md §2-3).
MIN_CLASS_SIZE = 3
MIN_DEGREE = 3
# Exact solver: Gram matrices up to this order go to LAPACK's dense eigensolver; larger ones
# to ARPACK, whose cost grows as order**2 per iteration instead of order**3.
DENSE_EIG_MAX = 300
# A second eigenvalue below this fraction of lambda1 (s2 < 1e-5 s1) is rounding noise of a
# rank-one B (a complete bipartite graph): lambda2 = 0, in both solvers. A 0/1 matrix of rank
# >= 2 has a smaller ratio only in contrived cases (lambda2 >= 1 / (rank * lambda1) is all that
# is known).
RANK_ONE_RTOL = 1e-10


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


# --------------------------------------------------------------------------- exact solver
@functools.cache
def gemm_dtype() -> torch.dtype:
    """The faster exact GEMM for 0/1 Gram matrices on this CPU: ``torch.int8`` or ``torch.float32``.

    An int8 GEMM (``torch._int_mm``, int32 accumulation) is several times faster than float32
    where the CPU has int8 dot-product instructions (AVX512-VNNI, AMX), and many times
    *slower* where it has not (seen on an AMD EPYC without AVX-512): a 4096 x 25088 layer then
    takes minutes instead of seconds. Both are exact, so a small timing picks one per process.
    """
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return torch.float32  # no int8 dot-product instructions: probing would cost seconds
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


def _exact_gram_product(x: torch.Tensor) -> torch.Tensor:
    """Exact ``x @ x.T`` of a 0/1 matrix as float64, on the current thread settings.

    Exact in int8 with int32 accumulation (< 2**31 terms) and in float32 (every partial sum is
    an integer, and the inner dimension, a layer's fan-in or fan-out, is far below 2**24).
    """
    if x.shape[1] >= 2**24:
        xd = x.to(torch.float64)
        return xd @ xd.T
    if gemm_dtype() == torch.int8:
        xi = x.to(torch.int8)
        return torch._int_mm(xi, xi.T.contiguous()).to(torch.float64)
    xf = x.to(torch.float32)
    if x.shape[0] < 2 * GRAM_BLOCK:
        return (xf @ xf.T).to(torch.float64)
    return _symmetric_product(xf).to(torch.float64)


def _gram(x: torch.Tensor) -> torch.Tensor:
    """Exact ``x @ x.T`` of a 0/1 matrix, as float64; small products on one thread."""
    small = x.shape[0] * x.shape[0] * x.shape[1] < 64 * SMALL_WORK
    with _threads(small):
        return _exact_gram_product(x)


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
    """``s1, s2`` by ARPACK's Lanczos on the sparse matrix itself (``svds``): an independent check."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    rows, cols = torch.nonzero(x, as_tuple=True)
    a = sp.csr_matrix(
        (np.ones(rows.numel()), (rows.numpy(), cols.numpy())), shape=tuple(x.shape)
    )
    if min(a.shape) <= 2:  # ARPACK needs k < min(shape); tiny cases are dense anyway
        return _top2_exact(x)
    s = np.sort(svds(a, k=2, return_singular_vectors=False, tol=1e-12, random_state=0))
    s2 = float(s[-2]) if s[-2] ** 2 > RANK_ONE_RTOL * s[-1] ** 2 else 0.0
    return float(s[-1]), s2


def _top2_exact(x: torch.Tensor) -> tuple[float, float]:
    """The oracle: exact Gram of the smaller side, then LAPACK (small) or ARPACK (large)."""
    side = x if x.shape[0] <= x.shape[1] else x.T
    l1, l2 = _top2_eig_symmetric(_gram(side))
    if l2 <= RANK_ONE_RTOL * l1:  # rank one: s2 is 0, not the ~1e-7 * s1 of rounding noise
        l2 = 0.0
    return math.sqrt(max(l1, 0.0)), math.sqrt(max(l2, 0.0))


# --------------------------------------------------------------------------- fast solver
# Lanczos stops once the Ritz residual ||G y - theta y|| is below these fractions of theta.
# The eigenvalue error is at most residual**2 / gap (gap: to the next eigenvalue), so 1e-7
# leaves s2 within ~1e-9 relative even where the next eigenvalue is 1e-5 relative away; on
# random masks (gaps ~1e-3) it is ~1e-13 (measured: 1e-5 gives ~5e-10, 1e-6 ~1e-11). The
# top pair, used to deflate, is converged further: its vector's error leaks into lambda2.
LANCZOS_RTOL = 1e-7
LANCZOS_RTOL_TOP = 1e-11
# Rough costs on a 2-core AMD EPYC (AVX2), one thread, in nanoseconds, from which the cheapest
# way to a pair of singular values is chosen; only their ratios matter. Typical Lanczos runs on
# random masks take 55-110 products in all (the bulk edge of a random matrix's spectrum is
# crowded: the gap below s2 shrinks like size**(-2/3)).
COST_PACK_ENTRY = 0.3         # packing a mask's smaller side as bits: per entry
COST_POPCOUNT_WORD = 0.35     # its exact Gram: per pair of vectors and 64-bit word
COST_DENSE_ENTRY = 0.3        # one compiled B^T B v product over an int8 mask: per entry
COST_SPARSE_NNZ = 1.3         # one compiled sparse product, B or B^T: per nonzero
COST_SPARSE_BUILD = 1.2       # building the CSR structure: per entry scanned
COST_STEP = 150_000.0         # one Lanczos step's fixed cost (Python, the tridiagonal's eigensolve)
COST_STEP_ENTRY = 100.0       # and its reorthogonalisation against ~50 earlier vectors: per entry
LANCZOS_PRODUCTS = 80
# Gram matrices up to this order go to LAPACK's dense eigensolver, larger ones to Lanczos.
FAST_DENSE_EIG_MAX = 700
# A Lanczos operator splits matrices of at least twice this many rows into two halves.
ROW_BLOCK = 64


def _step_cost(n: int) -> float:
    """Nanoseconds of one Lanczos step on vectors of length n, its product excluded."""
    return COST_STEP + COST_STEP_ENTRY * n


def _eig_cost(n: int) -> float:
    """Nanoseconds to the top two eigenvalues of an order-n Gram matrix (LAPACK or Lanczos)."""
    if n <= FAST_DENSE_EIG_MAX:
        return 0.12 * n**3 + 100_000.0  # dsyevr on one thread: ~2 ms at n=250, ~16 ms at 512
    return LANCZOS_PRODUCTS * (0.5 * n * n + _step_cost(n))


@functools.cache
def _openblas_threads_local():
    """scipy's OpenBLAS ``openblas_set_num_threads_local`` (sets the calling thread's count and
    returns the previous one), or None where scipy has another LAPACK or an older OpenBLAS.

    scipy's LAPACK is ~1.7x faster than torch's on these small symmetric eigenproblems on this
    AMD CPU, but only on one thread: OpenBLAS's own pool, spinning on a loaded 2-core machine,
    made a 120 x 120 eigensolve 100x slower. No environment variable can change it after import.
    """
    import ctypes

    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS, if that is its LAPACK)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "scipy_openblas" in line and "openblas64" not in line}
        for path in sorted(paths):
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
            return fn
    except (OSError, AttributeError):
        pass
    return None


@functools.cache
def _dsyevr():
    """LAPACK's ``dsyevr`` from scipy's OpenBLAS, called through ctypes, or None.

    scipy's own wrapper holds the GIL for the whole eigensolve, so the fast solver's worker
    threads took turns on the IMDB classes' eigenproblems (two ran them no faster than one).
    A ctypes call releases the GIL; the routine and its
    arguments are scipy's, so the eigenvalues are the same bits.
    """
    import ctypes

    import scipy.linalg.cython_lapack as cython_lapack

    capsule = cython_lapack.__pyx_capi__["dsyevr"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    if not address:
        return None
    c_int_p, c_double_p, c_char_p = (ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double),
                                     ctypes.c_char_p)
    # jobz range uplo n a lda vl vu il iu abstol m w z ldz isuppz work lwork iwork liwork info
    argtypes = [c_char_p] * 3 + [c_int_p, c_double_p, c_int_p] + [c_double_p] * 2 + [c_int_p] * 2 + [
        c_double_p, c_int_p, c_double_p, c_double_p, c_int_p, c_int_p, c_double_p, c_int_p, c_int_p, c_int_p, c_int_p]
    return ctypes.CFUNCTYPE(None, *argtypes)(address)


def _dsyevr_top2(g: np.ndarray) -> tuple[float, float] | None:
    """The two largest eigenvalues of a symmetric float64 ``g`` (overwritten) by ``dsyevr``, as
    scipy's ``lapack.dsyevr(g, compute_v=0, range="I", il=n-1, iu=n)`` computes them, without
    the GIL; None if the routine is unavailable or reports an error."""
    import ctypes

    fn = _dsyevr()
    if fn is None or not (g.flags.f_contiguous or g.flags.c_contiguous):  # symmetric: either order
        return None
    n = g.shape[0]
    c_int, c_double = ctypes.c_int, ctypes.c_double
    w, z = np.zeros(n), np.zeros(1)
    isuppz = np.zeros(2, dtype=np.intc)
    work, iwork = np.zeros(max(1, 26 * n)), np.zeros(max(1, 10 * n), dtype=np.intc)
    m, info = c_int(0), c_int(0)

    def ptr(a, kind=ctypes.c_double):
        return a.ctypes.data_as(ctypes.POINTER(kind))

    fn(b"N", b"I", b"U", ctypes.byref(c_int(n)), ptr(g), ctypes.byref(c_int(n)),
       ctypes.byref(c_double(0.0)), ctypes.byref(c_double(0.0)), ctypes.byref(c_int(n - 1)),
       ctypes.byref(c_int(n)), ctypes.byref(c_double(0.0)), ctypes.byref(m), ptr(w), ptr(z),
       ctypes.byref(c_int(1)), ptr(isuppz, c_int), ptr(work), ctypes.byref(c_int(work.size)),
       ptr(iwork, c_int), ctypes.byref(c_int(iwork.size)), ctypes.byref(info))
    if info.value != 0 or m.value != 2:
        return None
    return float(w[1]), float(w[0])


def _top2_eigvalsh(g: torch.Tensor) -> tuple[float, float]:
    """The two largest eigenvalues of a small symmetric matrix: LAPACK's dsyevr (top two only)
    when scipy's OpenBLAS can be kept on one thread, else torch's eigvalsh."""
    if _openblas_threads_local() is not None:
        top = _dsyevr_top2(g.numpy())
        if top is not None:
            return top
    w = torch.linalg.eigvalsh(g)
    return float(w[-1]), float(w[-2])


def _plan(rows: int, cols: int, nnz: int) -> tuple[str, float]:
    """The cheapest route to ``s1, s2`` of a ``rows x cols`` 0/1 matrix and its estimated cost
    (ns): ``"gram"`` (exact Gram of the smaller side, then an eigensolver), ``"sparse"`` or
    ``"dense"`` (Lanczos on ``B^T B`` applied through B's CSR structure or through B itself)."""
    small, large = sorted((rows, cols))
    costs = {
        "gram": rows * cols * COST_PACK_ENTRY + small * small / 2 * -(-large // 64) * COST_POPCOUNT_WORD
        + _eig_cost(small),
        "sparse": rows * cols * COST_SPARSE_BUILD
        + LANCZOS_PRODUCTS * (2 * nnz * COST_SPARSE_NNZ + _step_cost(small)),
        "dense": LANCZOS_PRODUCTS * (rows * cols * COST_DENSE_ENTRY + _step_cost(small)),
    }
    route = min(costs, key=costs.get)
    return route, costs[route]


def _tridiagonal_top(alpha: list, beta: list) -> tuple[float, np.ndarray]:
    """Largest eigenvalue of the symmetric tridiagonal (alpha, beta) and its eigenvector."""
    from scipy.linalg import eigh_tridiagonal

    k = len(alpha)
    if k == 1:
        return float(alpha[0]), np.ones(1)
    w, s = eigh_tridiagonal(
        np.asarray(alpha), np.asarray(beta[: k - 1]), select="i", select_range=(k - 1, k - 1)
    )
    return float(w[0]), s[:, 0]


def _lanczos_top(
    apply: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    rtol: float,
    deflate: torch.Tensor | None = None,
    noise: float = 0.0,
) -> tuple[float, torch.Tensor]:
    """Largest eigenvalue and unit eigenvector of a symmetric PSD operator, by Lanczos with full
    reorthogonalisation, on the orthogonal complement of the rows of ``deflate`` (orthonormal).

    Stops when the Ritz residual is below ``rtol`` times the Ritz value, or when the Krylov
    space stops growing (an invariant subspace: the Ritz value is then exact), with ``noise``
    the size below which a new direction is rounding error.
    """
    n = start.numel()
    limit = n - (0 if deflate is None else deflate.shape[0])
    basis = torch.empty(min(limit, 64) + 1, n, dtype=torch.float64)
    q = start.to(torch.float64).clone()
    for _ in range(2):
        if deflate is not None:
            q -= deflate.T @ (deflate @ q)
    q /= torch.linalg.vector_norm(q)
    alpha: list[float] = []
    beta: list[float] = []
    theta, s = 0.0, np.ones(1)
    for j in range(limit):
        if j + 1 >= basis.shape[0]:  # grow the basis storage geometrically
            grown = torch.empty(min(limit, 2 * basis.shape[0]) + 1, n, dtype=torch.float64)
            grown[: j + 1] = basis[: j + 1]
            basis = grown
        basis[j] = q
        w = apply(q)
        a = float(q.dot(w))
        done = j + 1 == limit
        q_all = basis[: j + 1]
        for _ in range(2):  # classical Gram-Schmidt twice: orthogonal to working precision
            if deflate is not None:
                w -= deflate.T @ (deflate @ w)
            w -= q_all.T @ (q_all @ w)
        b = float(torch.linalg.vector_norm(w))
        alpha.append(a)
        beta.append(b)
        scale = max(max(alpha), noise)
        if b <= 1e-13 * scale:
            done = True
        if done or (j >= 2 and j % 2 == 0):
            theta, s = _tridiagonal_top(alpha, beta)
            residual = b * abs(s[-1])
            # converged, or at the rounding floor of an operator of norm `scale` (theta tiny)
            if done or residual <= rtol * theta or residual <= 1e-13 * scale:
                break
        q = w / b
    k = len(alpha)
    vec = basis[:k].T @ torch.from_numpy(np.ascontiguousarray(s))
    return theta, vec / torch.linalg.vector_norm(vec)


def _top2_eigenvalues(apply: Callable, n: int) -> tuple[float, float]:
    """The two largest eigenvalues of an order-n PSD operator (exactly repeated ones included).

    Lanczos from the all-ones vector (the top eigenvector of a Gram matrix of a 0/1 matrix is
    non-negative, so it is never missed) finds ``lambda1``; a second run on the orthogonal
    complement of its eigenvector, from a fixed pseudo-random start, finds ``lambda2``. A
    single run can miss a second copy of a repeated eigenvalue (two identical components give
    ``lambda1 == lambda2``): the second run cannot, as the copy is the top of the complement.
    """
    if n == 1:
        return float(apply(torch.ones(1, dtype=torch.float64))[0]), 0.0
    lam1, v1 = _lanczos_top(apply, torch.ones(n, dtype=torch.float64), LANCZOS_RTOL_TOP)
    if lam1 <= 0:
        return 0.0, 0.0
    start = torch.from_numpy(_start(n))
    lam2, _ = _lanczos_top(apply, start, LANCZOS_RTOL, deflate=v1[None], noise=lam1)
    return lam1, min(lam2, lam1)


def _dense_partial(b: np.ndarray, v: torch.Tensor) -> torch.Tensor:
    """``B^T B v`` for a C-ordered int8 0/1 ``B`` in one compiled pass over it."""
    from . import spectral_kernels  # numba's import (~0.3 s) only where a Lanczos route runs

    out = np.zeros(b.shape[1])
    spectral_kernels.gram_dense(b, v.numpy(), out)
    return torch.from_numpy(out)


def _sparse_partial(csr, v: torch.Tensor) -> torch.Tensor:
    """``B^T B v`` for a 0/1 ``B`` given by its CSR structure ``(indptr, indices)``."""
    from . import spectral_kernels

    out = np.zeros(v.numel())
    spectral_kernels.gram_csr(*csr, v.numpy(), out)
    return torch.from_numpy(out)


class _GramOperator:
    """``v -> B^T B v`` for a 0/1 ``B`` given as two halves of its rows (dense blocks, or their
    CSR structure), summed in a fixed order. With a ``helper`` executor the halves run at once;
    without, one after the other: the same operations either way, so the same bits."""

    def __init__(self, b: torch.Tensor, nnz: int, sparse: bool, helper=None):
        from . import spectral_kernels

        b = b.numpy()
        cut = b.shape[0] // 2 if b.shape[0] >= 2 * ROW_BLOCK else b.shape[0]
        halves = [b[:cut], b[cut:]] if cut < b.shape[0] else [b]
        if sparse:
            self.parts = [spectral_kernels.csr_from_dense(h) for h in halves]
            self.partial = _sparse_partial
        else:
            self.parts = halves
            self.partial = _dense_partial
        self.helper = helper

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.partial(self.parts[0], v)
        if self.helper is not None:
            second = self.helper.submit(self.partial, self.parts[1], v)
            first = self.partial(self.parts[0], v)
            return first + second.result()
        return self.partial(self.parts[0], v) + self.partial(self.parts[1], v)


class _RowHalves:
    """``v -> G v`` for a large float32 Gram matrix ``G`` (exact integers), its two halves of
    rows on the calling thread and on ``helper`` if given: each half is the same product
    whoever computes it, so the same bits."""

    def __init__(self, g: np.ndarray, helper=None):
        cut = g.shape[0] // 2
        self.halves, self.helper = (g[:cut], g[cut:]), helper

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        from . import spectral_kernels

        (first, second), v = self.halves, v.numpy()
        out = np.empty(first.shape[0] + second.shape[0])
        top, bottom = out[: first.shape[0]], out[first.shape[0]:]
        if self.helper is None:
            spectral_kernels.matvec(first, v, top)
            spectral_kernels.matvec(second, v, bottom)
        else:
            later = self.helper.submit(spectral_kernels.matvec, second, v, bottom)
            spectral_kernels.matvec(first, v, top)
            later.result()
        return torch.from_numpy(out)


def _fast_gram(x: torch.Tensor, helper=None, dtype=np.float64) -> np.ndarray:
    """The exact Gram matrix of the smaller side of an int8 0/1 matrix: that side's vectors
    packed as bits, each entry a count of common ones (popcount; 7x faster than the float32
    GEMM on this CPU, and the same integers). ``dtype`` float32 holds them exactly below 2**24
    ones per vector. Given ``helper`` (an executor), it computes the later rows, which hold
    half of the pairs."""
    from . import spectral_kernels

    b = np.ascontiguousarray(x.numpy())
    p = spectral_kernels.pack_rows(b) if b.shape[0] <= b.shape[1] else spectral_kernels.pack_columns(b)
    n = p.shape[0]
    g = np.empty((n, n), dtype=dtype)
    if helper is None or n < 64:
        spectral_kernels.gram_bits(p, g, 0, n)
    else:
        cut = int(n * (1 - math.sqrt(0.5)))  # rows before it pair with (n - i) others: half of all pairs
        later = helper.submit(spectral_kernels.gram_bits, p, g, cut, n)
        spectral_kernels.gram_bits(p, g, 0, cut)
        later.result()
    return g


def _top2_fast(x: torch.Tensor, nnz: int | None = None, helper=None) -> tuple[float, float]:
    """``s1, s2`` of an int8 0/1 matrix by the cheapest route of :func:`_plan`, on the calling
    thread; given ``helper`` (an executor; nothing else running), half of each Lanczos product
    or of the Gram's entries is computed on it."""
    rows, cols = x.shape
    nnz = int(np.count_nonzero(x.numpy())) if nnz is None else nnz
    if nnz == 0:
        return 0.0, 0.0
    if min(rows, cols) == 1:
        return math.sqrt(nnz), 0.0
    route, _ = _plan(rows, cols, nnz)
    if route == "gram":
        # exact integers: the same bits whoever computes which rows
        if min(rows, cols) <= FAST_DENSE_EIG_MAX:
            l1, l2 = _top2_eigvalsh(torch.from_numpy(_fast_gram(x, helper)))
        else:
            g = _fast_gram(x, helper, np.float32 if max(rows, cols) < 2**24 else np.float64)
            l1, l2 = _top2_eigenvalues(_RowHalves(g, helper), g.shape[0])
    else:
        if rows < cols:  # vectors live on the smaller side: the columns of a tall matrix
            x = x.T.contiguous()
        op = _GramOperator(x, nnz, sparse=route == "sparse", helper=helper)
        l1, l2 = _top2_eigenvalues(op, x.shape[1])
    if l2 <= RANK_ONE_RTOL * l1:
        l2 = 0.0
    return math.sqrt(max(l1, 0.0)), math.sqrt(max(l2, 0.0))


_thread_lock = threading.Lock()
_thread_depth = 0
_threads_before = 1
_openblas_before = 0


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch on one intra-op thread inside the block (nested and concurrent uses share it).

    The fast solver parallelises over whole problems instead (:func:`_solve`): results then do
    not depend on the thread count, and the 2-core machine is not oversubscribed by spinning
    thread pools, which made small torch calls many times slower under load.
    """
    global _thread_depth, _threads_before, _openblas_before
    local = _openblas_threads_local()
    with _thread_lock:
        if _thread_depth == 0:
            _threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
            _openblas_before = local(1) if local is not None else 0
        _thread_depth += 1
    try:
        yield
    finally:
        with _thread_lock:
            _thread_depth -= 1
            if _thread_depth == 0:
                torch.set_num_threads(_threads_before)
                if local is not None:
                    local(_openblas_before)


def _as_int8(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu")
    return (x if x.dtype == torch.bool else x.ne(0)).to(torch.int8).contiguous()


def top2_singular_values(
    x: torch.Tensor, solver: str = "auto", nnz: int | None = None
) -> tuple[float, float]:
    """The two largest singular values of a 0/1 matrix ``x`` (any orientation), in float64.

    ``solver``: ``"auto"`` (the fast path: Lanczos on ``B^T B`` through the mask itself, sparse
    or dense, or on the exact Gram matrix of the smaller side, whichever :func:`_plan` finds
    cheapest; converged until ``s2`` is within ~1e-9 relative of the exact value), ``"exact"``
    (the oracle: exact Gram of the smaller side, LAPACK or ARPACK; ``"dense"`` is its former
    name) or ``"sparse"`` (ARPACK's ``svds`` on the sparse matrix, an independent check).
    ``nnz``, if the caller knows it, saves a pass over ``x``.
    """
    if solver not in SOLVERS + ("dense",):
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if x.numel() == 0 or min(x.shape) == 0:
        return 0.0, 0.0
    if min(x.shape) == 1:
        return math.sqrt(float(x.sum())), 0.0
    if solver == "auto":
        with _one_torch_thread():
            return _top2_fast(_as_int8(x), nnz)
    return _top2_sparse(x) if solver == "sparse" else _top2_exact(x)


# --------------------------------------------------------------------------- one layer
def _check_mask(mask: torch.Tensor, name: str) -> None:
    """A mask must be boolean or hold only 0 and 1 (a score tensor or NaNs are mistakes)."""
    if mask.dtype == torch.bool:
        return
    if mask.is_complex():
        raise ValueError(f"mask of layer {name!r} is complex ({mask.dtype}): pass a bool mask")
    bad = (mask != 0) & (mask != 1)  # NaN is neither
    if bool(bad.any()):
        found = mask[bad].flatten()[0].item()
        raise ValueError(
            f"mask of layer {name!r} holds values other than 0 and 1 (found {found:g}): pass a "
            "bool mask, e.g. scores > threshold or lib.pruning.global_mask(scores, density)"
        )


def biadjacency(mask: torch.Tensor, name: str = "<mask>") -> torch.Tensor:
    """The 0/1 biadjacency matrix ``B`` (``|L| x |R|``) of a weight mask, as bool.

    ``mask`` has the weight's shape, ``(out, in)`` or ``(out, in, kh, kw)``, and is boolean or
    holds only 0 and 1; anything else raises a ``ValueError`` naming the layer ``name``.
    """
    mask = torch.as_tensor(mask)
    if mask.dim() < 2:
        raise ValueError(
            f"mask of layer {name!r} needs at least 2 dimensions (out, in, ...), "
            f"got shape {tuple(mask.shape)}"
        )
    mask = mask.detach().to("cpu")
    _check_mask(mask, name)
    mask = mask.reshape(mask.shape[0], -1)
    return (mask if mask.dtype == torch.bool else mask.ne(0)).T


def _nan_metrics() -> dict:
    return {k: math.nan for k in METRICS + EXTRA}


class _Layer:
    """One layer's graph, prepared once: isolated vertices dropped, left vertices (rows) sorted
    by degree so that every IMDB class ``K_d`` is a contiguous row slice of one matrix, and the
    list of singular-value problems (:meth:`problems`) whose answers :meth:`metrics` assembles."""

    def __init__(self, mask: torch.Tensor, name: str):
        # Work on the weight's layout (rows: right vertices) until the one transposing copy:
        # dropping isolated right vertices is then a cheap row gather, not a column gather.
        # int8 0/1 (a bool view): numpy's integer sums on it are vectorised (torch's are ~20x
        # slower); int32 accumulation is exact, as a degree is below 2**31.
        weight = biadjacency(mask, name).T.contiguous().view(torch.int8).numpy()
        self.size_right, self.size_left = weight.shape
        deg_left = torch.from_numpy(weight.sum(0, dtype=np.int32)).to(torch.int64)
        deg_right = weight.sum(1, dtype=np.int32)
        self.edges = int(deg_left.sum())
        self.classes: list[tuple[int, int, int, int]] = []  # (d, start, stop, n_right)
        if self.edges == 0:
            self.b = torch.zeros(0, 0, dtype=torch.int8)
            return
        if (deg_right == 0).any():
            weight = weight[np.flatnonzero(deg_right)]
        keep_left = torch.nonzero(deg_left, as_tuple=True)[0]
        order = keep_left[torch.argsort(deg_left[keep_left], stable=True)]
        # rows: left vertices sorted by degree. torch's transposing copy is tiled (numpy's took
        # 2.8x as long on VGG-16's classifier); numpy copies whole rows (torch's int8 gather is slow).
        rows = torch.from_numpy(weight).t().contiguous().numpy()[order.numpy()]
        self.b = torch.from_numpy(rows)
        values, counts = np.unique(deg_left[order].numpy(), return_counts=True)  # sorted already
        starts = np.cumsum(counts) - counts
        for d, n_d, start in zip(values.tolist(), counts.tolist(), starts.tolist()):
            if d >= MIN_DEGREE and n_d >= MIN_CLASS_SIZE:
                # right vertices of K_d (a loop of row maxima is ~20x faster than reduceat)
                n_right = int(np.count_nonzero(rows[start:start + n_d].max(0)))
                if d * n_d / n_right >= MIN_DEGREE:
                    self.classes.append((d, start, start + n_d, n_right))

    @property
    def whole_defined(self) -> bool:
        n_left, n_right = self.b.shape
        return self.edges > 0 and self.edges / n_left >= MIN_DEGREE and self.edges / n_right >= MIN_DEGREE

    def problems(self) -> list[tuple[object, Callable, str, float]]:
        """``(key, solve, route, estimated cost)`` for the whole layer (key ``"whole"``) and for
        every counted class (key ``d``); ``solve(helper)`` returns ``(s1, s2)``."""
        out = []
        if self.whole_defined:
            route, cost = _plan(*self.b.shape, self.edges)
            out.append(("whole", functools.partial(_top2_fast, self.b, self.edges), route, cost))
        for d, start, stop, n_right in self.classes:
            route, cost = _plan(stop - start, n_right, d * (stop - start))
            out.append((d, functools.partial(self._class_top2, d, start, stop, n_right), route, cost))
        return out

    def class_matrix(self, start: int, stop: int, n_right: int) -> torch.Tensor:
        """Rows ``start:stop`` (one class ``K_d``), without their isolated columns when that
        makes the smaller side smaller."""
        rows = self.b[start:stop]
        if n_right < min(stop - start, rows.shape[1]):
            rows = rows[:, torch.from_numpy(rows.numpy().max(0) > 0)]
        return rows

    def _class_top2(self, d: int, start: int, stop: int, n_right: int, helper=None) -> tuple[float, float]:
        return _top2_fast(self.class_matrix(start, stop, n_right), d * (stop - start), helper)

    def metrics(self, solved: Mapping) -> dict:
        """All metrics, from the singular values of :meth:`problems` keyed as there."""
        out = _nan_metrics()
        out.update(size_left=float(self.size_left), size_right=float(self.size_right))
        size = self.size_left * self.size_right
        out["layer_density"] = self.edges / size if size else math.nan
        out["edges"] = float(self.edges)
        if self.edges == 0:
            out.update(n_left=0.0, n_right=0.0, imdb_classes=0.0)
            return out
        n_left, n_right = self.b.shape
        d_left, d_right = self.edges / n_left, self.edges / n_right
        out.update(n_left=float(n_left), n_right=float(n_right), d_left=d_left, d_right=d_right)
        out.update(_imdb_from(self.classes, solved))
        if not self.whole_defined:
            return out
        mu0, mu_hat = solved["whole"]
        bound = math.sqrt(d_left - 1) + math.sqrt(d_right - 1)
        # Reference NaRC: S = all non-isolated left vertices, |E(S, N(S))| counted over both
        # directions of each edge (hence 2E); normalised by the full layer size (metrics.md §3).
        narc = (
            (mu_hat**2 / 4 + 1) * math.sqrt(n_left * n_right)
            - abs(2 * self.edges - (d_left / self.size_right) * n_left * n_right)
        ) / size
        out.update(
            mu0=mu0,
            mu_hat=mu_hat,
            delta_s=2 * math.sqrt(mu0 - 1) - mu_hat,
            delta_r=bound - mu_hat,
            delta_r_norm=(bound - mu_hat) / bound,
            narc=narc,
        )
        return out


def _imdb_from(classes: list, solved: Mapping) -> dict:
    """IMDB over the d-left-regular subgraphs ``K_d`` (metrics.md §3)."""
    gaps, gaps_norm, gaps_s = [], [], []
    for d, start, stop, n_right in classes:
        s1, s2 = solved[d]
        bound = math.sqrt(d - 1) + math.sqrt(d * (stop - start) / n_right - 1)
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


# A problem estimated to take longer than this (ns) runs alone, before the pool takes the many
# small ones: its Lanczos products split over two threads, or its Gram's GEMM on two threads.
SOLO_COST = 3e8


def _init_worker() -> None:
    # OpenMP's and OpenBLAS's thread counts are per thread: set them in each worker.
    torch.set_num_threads(1)
    if _openblas_threads_local() is not None:
        _openblas_threads_local()(1)


def _solve(layers: list[_Layer], solver: str, workers: int, progress: bool = False) -> list[dict]:
    """Every singular-value problem of ``layers``, then their metrics (one dict per layer).

    The fast solver runs the largest Lanczos problems one at a time, each product split over
    two threads, then the rest ``workers`` at a time, costliest first, each on one thread.
    Every answer depends only on its own problem (a product is split the same way whatever
    runs it), so results are bit-identical whatever the worker count or finishing order.
    """
    tasks = [(i, *problem) for i, layer in enumerate(layers) for problem in layer.problems()]
    solved: list[dict] = [{} for _ in layers]
    shown = bar(enabled=progress, total=len(tasks), desc="layer metrics", leave=False)
    if solver == "auto":
        tasks.sort(key=lambda t: -t[4])
        solo = [t for t in tasks if t[4] >= SOLO_COST]
        rest = [t for t in tasks if t[4] < SOLO_COST]
        with _one_torch_thread(), contextlib.ExitStack() as stack:
            pool = None
            if workers > 1:
                pool = stack.enter_context(ThreadPoolExecutor(workers, initializer=_init_worker))
            helper = None
            if pool is not None and solo:
                helper = stack.enter_context(ThreadPoolExecutor(1, initializer=_init_worker))
            for i, key, solve, _, _ in solo:
                solved[i][key] = solve(helper=helper)
                shown.update()
            if pool is None:
                answers = ((t, t[2]()) for t in rest)
            else:
                answers = zip(rest, pool.map(lambda t: t[2](), rest))
            for (i, key, *_), answer in answers:
                solved[i][key] = answer
                shown.update()
    else:
        for i, key, *_ in tasks:
            layer = layers[i]
            if key == "whole":
                x = layer.b
            else:
                d, start, stop, n_right = next(c for c in layer.classes if c[0] == key)
                x = layer.class_matrix(start, stop, n_right)
            solved[i][key] = top2_singular_values(x, solver)
            shown.update()
    shown.close()
    return [layer.metrics(s) for layer, s in zip(layers, solved)]


def _default_workers() -> int:
    # torch's thread count honours OMP_NUM_THREADS, which a runner sharing the cores has set
    return max(1, min(2, torch.get_num_threads()))


def layer_metrics(
    mask: torch.Tensor, solver: str = "auto", name: str = "<mask>", workers: int | None = None
) -> dict:
    """All graph metrics of one layer's mask, as a dict of floats (NaN where undefined).

    Keys: ``n_left, n_right`` (non-isolated vertices), ``edges``, ``d_left, d_right`` (their
    average degrees), ``mu0 = s1(B)``, ``mu_hat = s2(B)``, ``delta_s``, ``delta_r``,
    ``delta_r_norm``, ``imdb``, ``imdb_norm``, ``narc``; and ``size_left, size_right``
    (``|L|, |R|`` with isolated vertices), ``layer_density``, ``imdb_classes`` (how many
    ``K_d`` counted) and ``delta_s_imdb`` (the IMDB loop applied to ``delta_s``).

    The whole-layer metrics exist only when ``d_left >= 3`` and ``d_right >= 3``; IMDB has its
    own rule (metrics.md §2-3). Isolated vertices are dropped first; only NaRC's normalisation
    uses the full ``|L| * |R|``. ``mask`` must be boolean or 0/1 (else a ``ValueError`` naming
    ``name``); ``solver`` is as in :func:`top2_singular_values`; ``workers`` (default: up to 2)
    is how many singular-value problems the fast solver runs at once.
    """
    _check_solver(solver)
    with _one_torch_thread():  # many small torch calls: a thread pool only adds overhead
        layer = _Layer(mask, name)
    return _solve([layer], solver, workers or _default_workers())[0]


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS + ("dense",):
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


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
    """``{layer name: mask}`` of a mapping, or of a model pruned with ``torch.nn.utils.prune``
    (its ``weight_mask`` buffers; an unpruned Conv2d/Linear counts as dense)."""
    if isinstance(masks_or_model, torch.nn.Module):
        from .models import prunable_layers

        return {
            name: module.weight_mask.detach() if hasattr(module, "weight_mask")
            else torch.ones(module.weight.shape, dtype=torch.bool)
            for name, module in prunable_layers(masks_or_model).items()
        }
    if isinstance(masks_or_model, Mapping):
        return masks_or_model
    raise TypeError(
        "model_metrics takes a {layer name: mask} mapping or a model pruned with "
        f"torch.nn.utils.prune, got {type(masks_or_model).__name__}"
    )


def model_metrics(
    masks_or_model, solver: str = "auto", progress: bool = False, workers: int | None = None
) -> pd.DataFrame:
    """One row per prunable layer: a ``layer`` column plus every key of :func:`layer_metrics`.

    Accepts ``{layer name: bool mask}`` or a model pruned with ``torch.nn.utils.prune`` (its
    ``weight_mask`` buffers are read; unpruned Conv2d/Linear layers count as dense). Every
    layer's mask is checked first, so a bad one fails before any work. ``progress`` shows a bar
    over the singular-value problems; ``workers`` is as in :func:`layer_metrics`.
    """
    _check_solver(solver)
    items = list(_masks_from(masks_or_model).items())
    workers = workers or _default_workers()
    with _one_torch_thread(), contextlib.ExitStack() as stack:
        # The layers are prepared ``workers`` at a time (a large layer's transposing copy and
        # degree sums release the GIL), each on one thread.
        pool = stack.enter_context(ThreadPoolExecutor(workers, initializer=_init_worker)) if workers > 1 else None
        layers = list((pool.map if pool else map)(lambda item: _Layer(item[1], item[0]), items))
    rows = _solve(layers, solver, workers, progress)
    names = [name for name, _ in items]
    return pd.DataFrame([{"layer": n, **r} for n, r in zip(names, rows)], columns=["layer", *METRICS, *EXTRA])


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
