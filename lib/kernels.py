"""Compiled one-pass loops over a layer's SynFlow scores (numba), for :mod:`lib.pruning`.

A SynFlow round needs, of ~10^7-10^8 weights, only those alive whose score falls in a narrow
band (below a bracket of the threshold: a few % of them). Built from torch operations that
takes five to eight passes over the scores (multiply, abs, compare, and with the alive flags,
nonzero, gather) and a materialised score tensor; these loops compute each score where it is
read and keep the few that qualify, in one pass. They compute a score exactly as torch does
(``|g| * w``; for a layer whose weight gradient is a product of two small matrices, the
output gradient ``g`` (``out x P``) and the input ``x`` (``P x in``), ``|sum_p g_ip x_pj| * w_ij``
summed as the BLAS kernel behind autograd sums it, see :func:`fma`; with ``P = 1``, an outer
product, both are given ``>= 0``), so the selection is bit-identical to one over torch-computed
scores.

* ``scan_*`` (the round's main pass): the alive weights scoring in a band ``lo <= score < hi``
  (``lo = -inf`` for "below ``hi``"; ``[v, nextafter(v))`` for "equal to ``v``"), a block of
  flags at a time without branches, then the hits; ``scan_grouped`` for a Linear layer whose
  input repeats over runs of columns (VGG-16's classifier), through each run's sorted weights.
* ``collect_*``: the same band one score at a time, from the end too (reversed arrays), and at
  most as many as asked: the latest of a large tie at the threshold.
* ``sample_*`` (the bracket's strided sample), ``remove_*``, ``compact_*`` (lists of alive
  weights), ``write_*`` (every score, for :func:`lib.pruning.score`).
* ``prefetch``: LLVM's prefetch hint, for the grouped loops, whose next addresses follow no
  stride the hardware learns.

The scans and collects take ``big`` (the dtype's largest finite value) and report ``ok``: False
if any score seen was above ``big`` or NaN (the caller then checks the alive ones). They append
to output buffers and return ``(count, next start, ok)``, stopping early when the buffers are
full (``next start`` says where to go on; it equals the loop's length when done). The four
``collect_*`` loops repeat their body instead of sharing an inlined helper, which measured
slower on this CPU. Single-threaded, releasing the GIL; compiled code is cached beside this
file (numba's ``cache=True``).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = [
    "scan_dense", "scan_outer", "scan_listed", "scan_csr", "scan_grouped",
    "collect_dense", "collect_outer", "collect_listed_dense", "collect_csr",
    "sample_dense", "sample_outer", "sample_listed", "sample_csr",
    "remove_at", "remove_grouped", "compact_listed", "compact_csr", "write_dense", "write_outer",
    "run_keys", "run_split", "pick", "prefetch", "fma",
]


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the CPU to fetch ``array[index]`` into its caches (LLVM's ``prefetch``: no fault,
    no effect on results). For loops whose next addresses are known a few steps ahead but
    follow no stride the hardware prefetcher could learn (a sorted run's first alive weight)."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]])
        byte_pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn_type = ir.FunctionType(ir.VoidType(), [byte_pointer.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fn_type, "llvm.prefetch.p0")
        builder.call(fn, [byte_pointer, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(array, index), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's ``fma``): how a BLAS kernel (MKL's sgemm here, checked
    at run time by :func:`lib.pruning._sums_as_fma`) accumulates each product of a matrix product."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@numba.njit(inline="always")
def _gradient(g, x, i, j):
    """The magnitude of entry ``(i, j)`` of the weight gradient ``g @ x`` (``g``: ``out x P``,
    ``x``: ``P x in``), its ``P`` products accumulated in order, each fused into the sum:
    ``g[i, 0] * x[0, j]`` alone when ``P`` is 1 (a Linear layer at batch 1; both ``>= 0``)."""
    s = g[i, 0] * x[0, j]
    for p in range(1, g.shape[1]):
        s = fma(g[i, p], x[p, j], s)
    return abs(s)


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
    """A layer whose weight gradient is the product of its output gradient ``g`` (``out x P``)
    and input ``x`` (``P x in``), ``P`` small (a Linear layer at batch 1: an outer product of
    ``g, x >= 0``): the score of flat position ``p = i * in + j`` is ``_gradient(g, x, i, j) * w[p]``,
    rounded as autograd's gradient times ``w`` is (``w`` and ``alive`` flat); ``idx`` gets ``p``."""
    cols, cap = x.shape[1], idx.size
    c = 0
    ok = True
    i = start // cols
    first = start - i * cols
    while i < g.shape[0]:
        base = i * cols
        for j in range(first, cols):
            s = _gradient(g, x, i, j) * w[base + j]
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
    return c, g.shape[0] * cols, ok


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
    n, cap, width = rowptr[-1], idx.size, x.shape[1]
    c = 0
    ok = True
    i = np.searchsorted(rowptr, start, side="right") - 1
    first = start
    while first < n:
        base = i * width
        for k in range(first, rowptr[i + 1]):
            s = _gradient(g, x, i, cols[k]) * wl[k]
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


# --------------------------------------------------------------------------------------------
# Block scans: the band's alive scores, flags computed branch-free a block at a time
# --------------------------------------------------------------------------------------------
#
# The loops above branch per score and run at ~3 ns a weight. These compute a block's flags
# (alive and in the band) without a branch, which LLVM vectorises (~0.6 ns a weight, near the
# memory's pace), and then collect from the 8-flag words that hold a hit: at SynFlow's ~3% of
# hits a scan costs ~1 ns a weight. Each ``scan_*`` appends to ``idx``/``val`` from ``c`` on
# and returns ``(c, next start, ok)`` like the ``collect_*`` loops, but stops when fewer than
# ``BLOCK`` (or a group) entries of room are left, so the caller grows the buffers and goes on.

BLOCK = 512  # flags computed before any is collected (a multiple of 8: read as 64-bit words)


@numba.njit(nogil=True, cache=True)
def _flag_dense(g, w, alive, lo, hi, big, flags):
    bad = np.uint8(0)
    for k in range(w.size):
        s = abs(g[k]) * w[k]
        bad |= np.uint8(not (s <= big))
        flags[k] = np.uint8(alive[k] != 0) & np.uint8(lo <= s) & np.uint8(s < hi)
    return bad


@numba.njit(nogil=True, cache=True)
def _flag_outer(gi, x, w, alive, lo, hi, big, flags):
    bad = np.uint8(0)
    for k in range(w.size):
        s = (gi * x[k]) * w[k]
        bad |= np.uint8(not (s <= big))
        flags[k] = np.uint8(alive[k] != 0) & np.uint8(lo <= s) & np.uint8(s < hi)
    return bad


@numba.njit(nogil=True, cache=True)
def _window_sums(g, i, x, j, e, acc):
    """Row ``i``'s gradient at columns ``j:e`` into ``acc`` (as :func:`_gradient`, signed: before
    its magnitude), a term at a time over the block: loops over contiguous rows, which LLVM
    vectorises."""
    n = e - j
    gp, xp = g[i, 0], x[0][j:e]
    for k in range(n):
        acc[k] = gp * xp[k]
    for p in range(1, g.shape[1]):
        gp, xp = g[i, p], x[p][j:e]
        for k in range(n):
            acc[k] = fma(gp, xp[k], acc[k])


@numba.njit(nogil=True, cache=True)
def _flag_listed(g, pos, wl, alive, lo, hi, big, flags):
    bad = np.uint8(0)
    for k in range(wl.size):
        p = pos[k]
        s = abs(g[p]) * wl[k]
        bad |= np.uint8(not (s <= big))
        flags[k] = np.uint8(alive[p] != 0) & np.uint8(lo <= s) & np.uint8(s < hi)
    return bad


@numba.njit(nogil=True, cache=True)
def _flag_csr(gi, x, cols, wl, alive, lo, hi, big, flags):
    bad = np.uint8(0)
    for k in range(wl.size):
        j = cols[k]
        s = (gi * x[j]) * wl[k]
        bad |= np.uint8(not (s <= big))
        flags[k] = np.uint8(alive[j] != 0) & np.uint8(lo <= s) & np.uint8(s < hi)
    return bad


@numba.njit(nogil=True, cache=True)
def _flag_csr_sums(g, i, x, cols, wl, alive, lo, hi, big, flags, acc):
    """:func:`_flag_csr` for a row whose gradient is a sum of products (:func:`_window_sums`)."""
    n = wl.size
    gp, xp = g[i, 0], x[0]
    for k in range(n):
        acc[k] = gp * xp[cols[k]]
    for p in range(1, g.shape[1]):
        gp, xp = g[i, p], x[p]
        for k in range(n):
            acc[k] = fma(gp, xp[cols[k]], acc[k])
    bad = np.uint8(0)
    for k in range(n):
        s = abs(acc[k]) * wl[k]
        bad |= np.uint8(not (s <= big))
        flags[k] = np.uint8(alive[cols[k]] != 0) & np.uint8(lo <= s) & np.uint8(s < hi)
    return bad


@numba.njit(nogil=True, cache=True)
def _flagged(flags, nb, idx, c):
    """Append the block offsets ``k < nb`` whose flag is set to ``idx`` from ``c``; the new ``c``.
    Words without a hit are skipped; within a word the stores are unconditional."""
    for k in range(nb, flags.size):  # a short last block: stale flags past its end
        flags[k] = 0
    words = flags.view(np.uint64)
    for q in range((nb + 7) // 8):
        if words[q] != 0:
            for k in range(8 * q, 8 * q + 8):
                idx[c] = k
                c += flags[k]
    return c


@numba.njit(nogil=True, cache=True)
def scan_dense(g, w, alive, lo, hi, big, start, idx, val, c):
    """:func:`collect_dense` by blocks: flat positions from ``start``."""
    n = w.size
    flags = np.zeros(BLOCK, np.uint8)
    bad = np.uint8(0)
    b = start
    while b < n and idx.size - c >= BLOCK:
        e = min(b + BLOCK, n)
        bad |= _flag_dense(g[b:e], w[b:e], alive[b:e], lo, hi, big, flags)
        c0 = c
        c = _flagged(flags, e - b, idx, c)
        for t in range(c0, c):
            p = b + idx[t]
            idx[t] = p
            val[t] = abs(g[p]) * w[p]
        b = e
    return c, b, bad == 0


@numba.njit(nogil=True, cache=True)
def scan_outer(g, x, w, alive, lo, hi, big, start, idx, val, c):
    """:func:`collect_outer` by blocks of a row: flat positions from ``start``."""
    cols = x.shape[1]
    flags = np.zeros(BLOCK, np.uint8)
    acc = np.empty(BLOCK, w.dtype)
    bad = np.uint8(0)
    p = start
    while p < w.size and idx.size - c >= BLOCK:
        i = p // cols
        base = i * cols
        j = p - base
        e = min(j + BLOCK, cols)
        if g.shape[1] == 1:  # an outer product
            bad |= _flag_outer(g[i, 0], x[0][j:e], w[base + j : base + e], alive[base + j : base + e], lo, hi, big, flags)
        else:  # |sum| * w: _flag_dense's |g| * w
            _window_sums(g, i, x, j, e, acc)
            bad |= _flag_dense(acc[: e - j], w[base + j : base + e], alive[base + j : base + e], lo, hi, big, flags)
        c0 = c
        c = _flagged(flags, e - j, idx, c)
        for t in range(c0, c):
            q = j + idx[t]
            idx[t] = base + q
            val[t] = _gradient(g, x, i, q) * w[base + q]
        p = base + e
    return c, p, bad == 0


@numba.njit(nogil=True, cache=True)
def scan_listed(g, pos, wl, alive, lo, hi, big, start, idx, val, c):
    """:func:`collect_listed_dense` by blocks: ``start`` counts list entries."""
    n = wl.size
    flags = np.zeros(BLOCK, np.uint8)
    bad = np.uint8(0)
    b = start
    while b < n and idx.size - c >= BLOCK:
        e = min(b + BLOCK, n)
        bad |= _flag_listed(g, pos[b:e], wl[b:e], alive, lo, hi, big, flags)
        c0 = c
        c = _flagged(flags, e - b, idx, c)
        for t in range(c0, c):
            k = b + idx[t]
            idx[t] = pos[k]
            val[t] = abs(g[pos[k]]) * wl[k]
        b = e
    return c, b, bad == 0


@numba.njit(nogil=True, cache=True)
def scan_csr(g, x, rowptr, cols, wl, alive, lo, hi, big, start, idx, val, c):
    """:func:`collect_csr` by blocks of a row: ``start`` counts entries."""
    n, width = rowptr[-1], x.shape[1]
    flags = np.zeros(BLOCK, np.uint8)
    acc = np.empty(BLOCK, wl.dtype)
    bad = np.uint8(0)
    i = np.searchsorted(rowptr, start, side="right") - 1
    k = start
    while k < n and idx.size - c >= BLOCK:
        while rowptr[i + 1] <= k:  # rows with no entry left
            i += 1
        e = min(k + BLOCK, rowptr[i + 1])
        base = i * width
        if g.shape[1] == 1:
            bad |= _flag_csr(g[i, 0], x[0], cols[k:e], wl[k:e], alive[base : base + width], lo, hi, big, flags)
        else:
            bad |= _flag_csr_sums(g, i, x, cols[k:e], wl[k:e], alive[base : base + width], lo, hi, big, flags, acc)
        c0 = c
        c = _flagged(flags, e - k, idx, c)
        for t in range(c0, c):
            q = k + idx[t]
            idx[t] = base + cols[q]
            val[t] = _gradient(g, x, i, cols[q]) * wl[q]
        k = e
    return c, k, bad == 0


# --------------------------------------------------------------------------------------------
# Grouped Linear layers: columns in runs of equal input, each run's weights kept sorted
# --------------------------------------------------------------------------------------------
#
# VGG-16's classifier reads a 512x1x1 feature map average-pooled to 7x7: its input is 512
# values, each repeated over 49 consecutive columns. Within such a run (a "group": row i,
# columns of one value x_c) every score is fl(fl(g_i x_c) w) with one multiplier, so the
# scores rise with w. Each group keeps its weights sorted (``ws``), their offsets in the group
# (``perm``), where its alive ones start (``first``) and the value there (``wfirst``): a scan
# reads one float per group, and walks a group only while its scores are in the band. Removed
# weights are those before ``first`` and, rarely (a tie dropping a later one), NaN holes.
# Groups are contiguous: group b holds flat positions ``b * size ... b * size + size - 1``.


_AHEAD = 32  # groups (or drops) between a prefetch and its use: ~the memory latency's worth of work


@numba.njit(nogil=True, cache=True)
def scan_grouped(g, xg, wmax, ws, perm, first, wfirst, size, lo, hi, big, start, idx, aux, val, c):
    """The alive scores in the band of a grouped Linear layer; ``start`` counts groups.

    ``g``: the output gradient; ``xg``: one input value per group of a row; ``wmax``: each
    row's largest initial weight (for the range check); ``ws``: each group's weights sorted,
    removed ones before ``first`` or NaN; ``perm``: their offsets in the group. ``idx`` gets
    layer positions and ``aux`` their index in ``ws``; group by group (ascending between
    groups, by score within).

    A walk moves ``first`` past NaN holes and sets ``wfirst``; until a group is next walked its
    ``wfirst`` may be a removed weight's value, no larger than the alive ones, so a group is
    never skipped wrongly."""
    per_row = xg.size
    xmax = np.float32(0.0)
    bad = np.uint8(0)
    for q in range(per_row):
        bad |= np.uint8(not (xg[q] <= big))
        xmax = max(xmax, xg[q])
    b = start
    nblocks = first.size
    while b < nblocks and idx.size - c >= size:
        i = b // per_row
        gi = g[i]
        if b % per_row == 0:  # every score of the row is at most this
            bad |= np.uint8(not ((gi * xmax) * wmax[i] <= big))
        row_end = min((i + 1) * per_row, nblocks)
        while b < row_end and idx.size - c >= size:
            ahead = b + _AHEAD
            if ahead < nblocks:  # the group walked _AHEAD steps on starts at no fixed stride
                k = ahead * size + np.int64(first[ahead])  # an emptied group's: the next one's (a hint never faults)
                prefetch(ws, k)
                prefetch(perm, k)
            m = gi * xg[b - i * per_row]
            if m * wfirst[b] < hi:  # NaN (0 * inf for an emptied group) skips
                base = b * size
                end = base + size
                k = base + np.int64(first[b])
                while k < end and ws[k] != ws[k]:  # a hole
                    k += 1
                first[b] = k - base
                wfirst[b] = ws[k] if k < end else np.inf
                while k < end:
                    s = m * ws[k]
                    if s >= hi:
                        break
                    if lo <= s:  # NaN: a hole
                        idx[c] = base + perm[k]
                        aux[c] = k
                        val[c] = s
                        c += 1
                    k += 1
            b += 1
    return c, b, bad == 0


@numba.njit(nogil=True, cache=True)
def remove_grouped(drop, sorted_index, w, alive, ws, first, size):
    """:func:`remove_at` for a grouped layer, also removing the weights from their groups: a
    group's lowest alive weight by moving its ``first`` past it (the usual case: a round drops
    each group's lowest), any other by marking it NaN in ``ws``. ``wfirst`` catches up when the
    group is next walked (cheaper than reading ``ws`` here)."""
    n = drop.size
    inverse = 1.0 / size
    for t in range(n):
        if t + _AHEAD < n:  # a drop or two per group: strides the hardware does not follow
            prefetch(w, drop[t + _AHEAD])
            prefetch(alive, drop[t + _AHEAD])
        w[drop[t]] = 0
        alive[drop[t]] = False
        k = sorted_index[t]
        b = np.int64(k * inverse)  # k // size without a division: exact after the correction
        b += (b + 1) * size <= k
        b -= b * size > k
        if k - b * size == first[b]:
            first[b] += 1
        else:
            ws[k] = np.nan


# --------------------------------------------------------------------------------------------
# Samples and removal
# --------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def sample_dense(g, w, alive, first, step, out, c):
    """Append the alive scores at flat positions ``first, first + step, ...`` to ``out``."""
    for p in range(first, w.size, step):
        if alive[p]:
            out[c] = abs(g[p]) * w[p]
            c += 1
    return c


@numba.njit(nogil=True, cache=True)
def sample_outer(g, x, w, alive, first, step, out, c):
    """:func:`sample_dense` for a layer scored as in :func:`collect_outer`."""
    cols = x.shape[1]
    for p in range(first, w.size, step):
        if alive[p]:
            i = p // cols
            out[c] = _gradient(g, x, i, p - i * cols) * w[p]
            c += 1
    return c


@numba.njit(nogil=True, cache=True)
def sample_listed(g, pos, wl, alive, first, step, out, c):
    """:func:`sample_dense` over list entries ``first, first + step, ...``."""
    for k in range(first, wl.size, step):
        if alive[pos[k]]:
            out[c] = abs(g[pos[k]]) * wl[k]
            c += 1
    return c


@numba.njit(nogil=True, cache=True)
def sample_csr(g, x, rowptr, cols, wl, alive, first, step, out, c):
    """:func:`sample_outer` over compressed-row entries ``first, first + step, ...``."""
    width = x.shape[1]
    i = 0
    for k in range(first, wl.size, step):
        while rowptr[i + 1] <= k:
            i += 1
        if alive[i * width + cols[k]]:
            out[c] = _gradient(g, x, i, cols[k]) * wl[k]
            c += 1
    return c


@numba.njit(nogil=True, cache=True)
def remove_at(drop, w, alive):
    """Zero the weights at positions ``drop`` and clear their alive flags."""
    for p in drop:
        w[p] = 0
        alive[p] = False


@numba.njit(nogil=True, cache=True)
def write_dense(g, w, alive, out):
    """Every score ``|g| * w`` into ``out``, ``-inf`` where the weight was removed (all flat)."""
    for p in range(w.size):
        out[p] = abs(g[p]) * w[p] if alive[p] else -np.inf


@numba.njit(nogil=True, cache=True)
def write_outer(g, x, w, alive, out):
    """:func:`write_dense` for a layer scored as in :func:`collect_outer`."""
    cols = x.shape[1]
    for i in range(g.shape[0]):
        base = i * cols
        for j in range(cols):
            out[base + j] = _gradient(g, x, i, j) * w[base + j] if alive[base + j] else -np.inf


@numba.njit(nogil=True, cache=True)
def run_keys(w, size, keys):
    """Sort keys of float32 ``w >= 0`` (flat, runs of ``size`` <= 256): its bits (which order
    as its values) above its offset in the run."""
    bits = w.view(np.uint32)
    for p in range(w.size):
        keys[p] = (np.uint64(bits[p]) << np.uint64(16)) | np.uint64(p % size)


@numba.njit(nogil=True, cache=True)
def run_split(keys, ws, perm):
    """Sorted :func:`run_keys` back into values ``ws`` (float32) and offsets ``perm``."""
    bits = ws.view(np.uint32)
    for p in range(keys.size):
        bits[p] = np.uint32(keys[p] >> np.uint64(16))
        perm[p] = np.uint8(keys[p] & np.uint64(0xFF))


@numba.njit(nogil=True, cache=True)
def pick(idx, aux, val, flags, t, out_idx, out_aux):
    """Copy the entries with ``val < t`` or a set flag into ``out_*``; their number."""
    c = 0
    for e in range(val.size):
        out_idx[c] = idx[e]
        out_aux[c] = aux[e]
        c += (val[e] < t) | flags[e]
    return c
