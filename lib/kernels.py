"""Compiled one-pass loops over a layer's SynFlow scores (numba), for :mod:`lib.pruning`.

A SynFlow round needs, of ~10^7-10^8 weights, only those alive whose score falls in a narrow
band (below a bracket of the threshold: a few % of them). Built from torch operations that
takes five to eight passes over the scores (multiply, abs, compare, and with the alive flags,
nonzero, gather) and a materialised score tensor; these loops compute each score where it is
read and keep the few that qualify, in one pass. They compute a score exactly as torch does
(``|g| * w``; ``(g_i * x_j) * w_ij`` for a Linear layer at batch 1), so the selection is
bit-identical to one over torch-computed scores.

Each loop takes the band ``lo <= score < hi`` (``lo = -inf`` for "below ``hi``"; ``[v,
nextafter(v))`` for "equal to ``v``"), a start, ``big`` (the dtype's largest finite value) and
two output buffers. It returns ``(count, next start, ok)``: the first ``count`` entries of
``idx``/``val`` are the positions and scores of the alive weights in the band, from ``start``
on, in order; it stops early when the buffers are full (``next start`` says where to go on;
it equals the loop's length when done); ``ok`` is False if any score seen, alive or not, was
above ``big`` or NaN (the caller then checks the alive ones). A loop has no data-dependent
branch: every score is written, and the slot moves on only for a hit. Single-threaded,
releasing the GIL; compiled code is cached beside this file (numba's ``cache=True``).
"""
from __future__ import annotations

import numba

__all__ = ["collect_dense", "collect_outer", "collect_listed_dense", "collect_listed_outer"]


@numba.njit(nogil=True, cache=True)
def collect_dense(g, w, alive, lo, hi, start, big, idx, val):
    """A flat layer: the score at ``i`` is ``|g[i]| * w[i]`` (``w >= 0``); ``idx`` gets ``i``."""
    n, cap = w.size, idx.size
    c = 0
    ok = True
    for i in range(start, n):
        s = abs(g[i]) * w[i]
        idx[c] = i
        val[c] = s
        c += alive[i] & (s >= lo) & (s < hi)
        ok &= s <= big
        if c == cap:
            return c, i + 1, ok
    return c, n, ok


@numba.njit(nogil=True, cache=True)
def collect_outer(g, x, w, alive, lo, hi, start, big, idx, val):
    """A Linear layer at batch 1, its weight gradient the outer product of its output gradient
    ``g`` (``out``) and input ``x`` (``in``), both ``>= 0``: the score of ``w[i, j]`` is
    ``(g[i] * x[j]) * w[i, j]``, rounded as autograd's gradient times ``w`` is; ``w`` and
    ``alive`` are 2-D and ``idx`` gets the flat position ``i * in + j``."""
    rows, cols = w.shape
    cap = idx.size
    c = 0
    ok = True
    for i in range(start // cols, rows):
        gi = g[i]
        for j in range(start - i * cols if i * cols < start else 0, cols):
            s = (gi * x[j]) * w[i, j]
            idx[c] = i * cols + j
            val[c] = s
            c += alive[i, j] & (s >= lo) & (s < hi)
            ok &= s <= big
            if c == cap:
                return c, i * cols + j + 1, ok
    return c, rows * cols, ok


@numba.njit(nogil=True, cache=True)
def collect_listed_dense(g, pos, wl, alive, lo, hi, start, big, idx, val):
    """:func:`collect_dense` over a list of the layer's weights: flat positions ``pos`` and
    their values ``wl`` (``g`` and ``alive`` flat, of the whole layer); ``idx`` gets ``pos[k]``."""
    n, cap = pos.size, idx.size
    c = 0
    ok = True
    for k in range(start, n):
        p = pos[k]
        s = abs(g[p]) * wl[k]
        idx[c] = p
        val[c] = s
        c += alive[p] & (s >= lo) & (s < hi)
        ok &= s <= big
        if c == cap:
            return c, k + 1, ok
    return c, n, ok


@numba.njit(nogil=True, cache=True)
def collect_listed_outer(g, x, rows, cols, pos, wl, alive, lo, hi, start, big, idx, val):
    """:func:`collect_outer` over a list of the layer's weights: their rows, columns, flat
    positions and values (``alive`` flat); ``idx`` gets ``pos[k]``."""
    n, cap = pos.size, idx.size
    c = 0
    ok = True
    for k in range(start, n):
        p = pos[k]
        s = (g[rows[k]] * x[cols[k]]) * wl[k]
        idx[c] = p
        val[c] = s
        c += alive[p] & (s >= lo) & (s < hi)
        ok &= s <= big
        if c == cap:
            return c, k + 1, ok
    return c, n, ok
