"""Compiled loops over a layer's 0/1 biadjacency matrix (numba), for :mod:`lib.spectral`.

The fast solver's Lanczos runs need ``B^T B v`` many times over for the largest layers
(VGG-16's 25088 x 4096 classifier: ~10^8 entries per product). Through torch that was a
float64 copy of each block of rows and two matrix-vector products over it; here one pass over
the int8 matrix (or over the column indices of a sparse one: B holds only ones, so no values)
computes each row's dot product and adds the row back, while it is in cache.

Each product loop *adds* into ``out``; the caller sums the halves of a matrix in a fixed
order, so a result does not depend on which thread ran which half. Sums are reassociated
(vectorised) by the compiler: the bits can differ from torch's by rounding, never by more.
Single-threaded, releasing the GIL; compiled code is cached beside this file (``cache=True``).
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["gram_dense", "gram_csr", "csr_from_dense", "pack_rows", "pack_columns", "gram_bits", "matvec"]

_FAST = {"reassoc", "contract", "nsz", "arcp"}  # no NaN/inf assumptions: inputs are finite anyway


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def gram_dense(b, v, out):
    """``out += B^T (B v)`` for an int8 0/1 ``B`` (rows x n, C order) and float64 ``v``, ``out``.

    Four rows at a time: one pass over ``v`` gives their four dot products, one pass over
    ``out`` adds the four rows back, so ``v`` and ``out`` (32 KB each for a 4096-wide layer,
    more than this CPU's L1) are streamed a quarter as often as row by row (measured 2x).
    """
    rows, n = b.shape
    i = 0
    while i + 4 <= rows:
        r0, r1, r2, r3 = b[i], b[i + 1], b[i + 2], b[i + 3]
        t0 = t1 = t2 = t3 = 0.0
        for j in range(n):
            vj = v[j]
            t0 += r0[j] * vj
            t1 += r1[j] * vj
            t2 += r2[j] * vj
            t3 += r3[j] * vj
        for j in range(n):
            out[j] += (r0[j] * t0 + r1[j] * t1) + (r2[j] * t2 + r3[j] * t3)
        i += 4
    while i < rows:
        row = b[i]
        t = 0.0
        for j in range(n):
            t += row[j] * v[j]
        for j in range(n):
            out[j] += row[j] * t
        i += 1


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def gram_csr(indptr, indices, v, out):
    """``out += B^T (B v)`` for a 0/1 ``B`` given by its CSR structure (its values are ones)."""
    for i in range(indptr.size - 1):
        t = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            t += v[indices[k]]
        for k in range(indptr[i], indptr[i + 1]):
            out[indices[k]] += t


@numba.njit(nogil=True, cache=True)
def csr_from_dense(b):
    """``(indptr int64, indices int32)`` of an int8 0/1 matrix, in one pass per row."""
    rows, n = b.shape
    indptr = np.zeros(rows + 1, dtype=np.int64)
    for i in range(rows):
        c = 0
        for j in range(n):
            c += b[i, j] != 0
        indptr[i + 1] = indptr[i] + c
    indices = np.empty(indptr[rows], dtype=np.int32)
    for i in range(rows):
        k = indptr[i]
        for j in range(n):
            if b[i, j] != 0:
                indices[k] = j
                k += 1
    return indptr, indices


@numba.njit(nogil=True, cache=True, inline="always")
def _popcount(x):
    # The bit-counting idiom: LLVM compiles it to the CPU's popcnt instruction.
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(nogil=True, cache=True)
def pack_rows(b):
    """The rows of a 0/1 matrix (rows x n, C order) as bits: uint64 (rows x ceil(n / 64))."""
    rows, n = b.shape
    words = (n + 63) // 64
    out = np.zeros((rows, words), dtype=np.uint64)
    for i in range(rows):
        for w in range(words):
            acc = np.uint64(0)
            base = w * 64
            for k in range(min(64, n - base)):
                acc |= np.uint64(b[i, base + k] != 0) << np.uint64(k)
            out[i, w] = acc
    return out


@numba.njit(nogil=True, cache=True)
def pack_columns(b):
    """The columns of a 0/1 matrix (rows x n, C order) as bits: uint64 (n x ceil(rows / 64)),
    reading ``b`` row by row (no transposed copy)."""
    rows, n = b.shape
    words = (rows + 63) // 64
    out = np.empty((n, words), dtype=np.uint64)
    acc = np.empty(n, dtype=np.uint64)
    for w in range(words):
        acc[:] = 0
        base = w * 64
        for k in range(min(64, rows - base)):
            row = b[base + k]
            bit = np.uint64(k)
            for j in range(n):
                acc[j] |= np.uint64(row[j] != 0) << bit
        out[:, w] = acc
    return out


@numba.njit(nogil=True, cache=True)
def gram_bits(p, g, start, stop):
    """Rows ``start:stop`` of the upper triangle of the Gram matrix ``B B^T`` of bit-packed
    rows ``p`` (:func:`pack_rows`, :func:`pack_columns`), and their mirror images, into float64 ``g``: each entry is
    a count of common ones, exact. Two calls on disjoint row ranges write disjoint entries."""
    rows, words = p.shape
    tile = 16  # 16 rows of p stay in L1 while every later row streams past them
    for i0 in range(start, stop, tile):
        i1 = min(i0 + tile, stop)
        for j in range(i0, rows):
            pj = p[j]
            for i in range(i0, min(i1, j + 1)):
                pi = p[i]
                c = np.uint64(0)
                for w in range(words):
                    c += _popcount(pi[w] & pj[w])
                g[i, j] = c
                g[j, i] = c


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def matvec(g, v, out):
    """``out = G v`` for a float32 ``G`` of exact integers (a Gram matrix: half the bytes of
    float64, the product's bottleneck) and float64 ``v``, summed in float64."""
    rows, n = g.shape
    for i in range(rows):
        row = g[i]
        t = 0.0
        for j in range(n):
            t += np.float64(row[j]) * v[j]
        out[i] = t
