"""Compiled one-pass loops over a layer's SynFlow scores (numba), for :mod:`lib.pruning`.

A SynFlow round needs, of ~10^7-10^8 weights, only those alive whose score falls in a narrow
band (below a bracket of the threshold: a few % of them). Built from torch operations that
takes five to eight passes over the scores (multiply, abs, compare, and with the alive flags,
nonzero, gather) and a materialised score tensor; these loops compute each score where it is
read and keep the few that qualify, in one pass. They compute a score exactly as torch does
(``|g| * w``; ``(g_i * x_j) * w_ij`` for a Linear layer at batch 1), so the selection is
bit-identical to one over torch-computed scores.

Each ``collect_*`` loop takes the band ``lo <= score < hi`` (``lo = -inf`` for "below
``hi``"; ``[v, nextafter(v))`` for "equal to ``v``"), a start, ``big`` (the dtype's largest
finite value) and two output buffers. It returns ``(count, next start, ok)``: the first
``count`` entries of ``idx``/``val`` are the positions and scores of the alive weights in the
band, from ``start`` on, in order; it stops early when the buffers are full (``next start``
says where to go on; it equals the loop's length when done); ``ok`` is False if any score
seen, alive or not, was above ``big`` or NaN (the caller then checks the alive ones). The
rare branches (a hit, a score out of range) are the only ones: cheaper here than branch-free
stores. The four loops repeat that body instead of sharing an inlined helper, which measured
slower on this CPU (bench/bench_pruning.py --methods SynFlow). Single-threaded, releasing the GIL; compiled code is cached beside this file
(numba's ``cache=True``).
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "collect_dense", "collect_outer", "collect_listed_dense", "collect_csr",
    "compact_listed", "compact_csr", "remove",
]


@numba.njit(nogil=True, cache=True)
def collect_dense(g, w, alive, lo, hi, start, big, idx, val):
    """A flat layer: the score at ``i`` is ``|g[i]| * w[i]`` (``w >= 0``); ``idx`` gets ``i``."""
    n, cap = w.size, idx.size
    c = 0
    ok = True
    for i in range(start, n):
        s = abs(g[i]) * w[i]
        if not s <= big:
            ok = False
        if (alive[i] != 0) & (lo <= s) & (s < hi):  # one branch, taken for hits only
            idx[c] = i
            val[c] = s
            c += 1
            if c == cap:
                return c, i + 1, ok
    return c, n, ok


@numba.njit(nogil=True, cache=True)
def collect_outer(g, x, w, alive, lo, hi, start, big, idx, val):
    """A Linear layer at batch 1, its weight gradient the outer product of its output gradient
    ``g`` (``out``) and input ``x`` (``in``), both ``>= 0``: the score of flat position
    ``p = i * in + j`` is ``(g[i] * x[j]) * w[p]``, rounded as autograd's gradient times ``w``
    is (``w`` and ``alive`` flat); ``idx`` gets ``p``."""
    cols, cap = x.size, idx.size
    c = 0
    ok = True
    i = start // cols
    first = start - i * cols
    while i < g.size:
        gi = g[i]
        base = i * cols
        for j in range(first, cols):
            s = (gi * x[j]) * w[base + j]
            if not s <= big:
                ok = False
            if (alive[base + j] != 0) & (lo <= s) & (s < hi):
                idx[c] = base + j
                val[c] = s
                c += 1
                if c == cap:
                    return c, base + j + 1, ok
        first = 0
        i += 1
    return c, g.size * cols, ok


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
        if not s <= big:
            ok = False
        if (alive[p] != 0) & (lo <= s) & (s < hi):
            idx[c] = p
            val[c] = s
            c += 1
            if c == cap:
                return c, k + 1, ok
    return c, n, ok


@numba.njit(nogil=True, cache=True)
def collect_csr(g, x, rowptr, cols, wl, alive, lo, hi, start, big, idx, val):
    """:func:`collect_outer` over a list of a Linear layer's weights in compressed rows: row
    ``i``'s entries are ``rowptr[i]:rowptr[i + 1]``, with columns ``cols`` and values ``wl``;
    ``start`` counts entries, and ``idx`` gets flat positions."""
    n, cap, width = rowptr[-1], idx.size, x.size
    c = 0
    ok = True
    i = np.searchsorted(rowptr, start, side="right") - 1
    first = start
    while first < n:
        gi = g[i]
        base = i * width
        for k in range(first, rowptr[i + 1]):
            s = (gi * x[cols[k]]) * wl[k]
            if not s <= big:
                ok = False
            p = base + cols[k]
            if (alive[p] != 0) & (lo <= s) & (s < hi):
                idx[c] = p
                val[c] = s
                c += 1
                if c == cap:
                    return c, k + 1, ok
        first = rowptr[i + 1]
        i += 1
    return c, n, ok


@numba.njit(nogil=True, cache=True)
def compact_listed(pos, wl, alive):
    """Move the entries of a list whose weight is still alive to its front, in order; their number."""
    n = 0
    for k in range(pos.size):
        if alive[pos[k]]:
            pos[n] = pos[k]
            wl[n] = wl[k]
            n += 1
    return n


@numba.njit(nogil=True, cache=True)
def compact_csr(rowptr, cols, wl, alive, width):
    """:func:`compact_listed` for compressed rows (``rowptr`` is updated); the new entry count."""
    n = 0
    start = rowptr[0]
    for i in range(rowptr.size - 1):
        stop = rowptr[i + 1]
        for k in range(start, stop):
            if alive[i * width + cols[k]]:
                cols[n] = cols[k]
                wl[n] = wl[k]
                n += 1
        start = stop
        rowptr[i + 1] = n
    return n


@numba.njit(nogil=True, cache=True)
def remove(drop, flat, alive, offsets, removed):
    """Zero the weights at flat positions ``drop``, clear their alive flags, and add to
    ``removed[j]`` how many fell in layer ``j`` (layer ``j`` spans ``offsets[j]:offsets[j + 1]``)."""
    for p in drop:
        flat[p] = 0
        alive[p] = False
        removed[np.searchsorted(offsets, p, side="right") - 1] += 1
