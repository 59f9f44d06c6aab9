"""ResNet-34's 3x3 convolutions at batch 1, one thread: torch's native ("slow") convolution
against the same products as matrix products in the other layout, with whether each equals it
bit for bit.

SynFlow's rounds on full-size ResNet-34 spend most of their forward and backward time in
layer3 (256 channels at 2x2): its convolution runs as one BLAS product with 4 columns, which
this machine's MKL does at a fraction of the pace it reaches on layer4's single column. The
transposed layout (``cols.T @ W.T``; ``g.T @ W`` for the input gradient) is faster there, but
sums in another order, so its masks would not be the current ones bit for bit: this prints
both, per shape, so that the choice can be rechecked on another machine or BLAS.

``--orders`` also tries to reproduce the slow layout's sums at 256x2x2 (forward and input
gradient) in numba, each product fused into its partial sum (LLVM's ``fma``, as
:mod:`lib.kernels`): sequential; in blocks of ``kc`` terms added up; and in ``V`` lanes times
``U`` accumulators (term k in lane k % V of accumulator (k // V) % U), the accumulators added
in turn or pairwise, then the lanes in turn, pairwise halving, or pairwise adjacent. A match
would let the kernels compute those products themselves with the masks kept.

    .venv/bin/python bench/bench_conv_layouts.py
    .venv/bin/python bench/bench_conv_layouts.py --orders
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F

from lib.kernels import fma

# (channels, spatial size) of ResNet-34's 3x3 convolutions at 32x32 input: layer1 .. layer4
SHAPES = [(64, 8), (128, 4), (256, 2), (512, 1)]


def ms(fn, calls: int) -> float:
    """Milliseconds a call of ``fn`` (after 10 warm-up calls)."""
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


@numba.njit(cache=True)
def _dots(a, b, out, block, lanes, accumulators, pairwise, horizontal):
    """out[i, j] = the sum over k of a[i, k] * b[j, k] in one order: ``block`` > 0: sequential
    fused sums of ``block`` terms, added up; else ``lanes`` x ``accumulators`` partial sums
    (``pairwise``: accumulators added pairwise; ``horizontal`` 0/1/2: lanes in turn, halving,
    adjacent pairs)."""
    n = a.shape[1]
    acc = np.zeros((accumulators, lanes), a.dtype)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            if block > 0:
                total = a.dtype.type(0)
                for k0 in range(0, n, block):
                    part = a.dtype.type(0)
                    for k in range(k0, min(k0 + block, n)):
                        part = fma(a[i, k], b[j, k], part)
                    total = total + part if k0 > 0 else part
                out[i, j] = total
                continue
            acc[:, :] = 0
            for k in range(n):
                u, v = (k // lanes) % accumulators, k % lanes
                acc[u, v] = fma(a[i, k], b[j, k], acc[u, v])
            m = accumulators
            if pairwise:
                while m > 1:
                    h = m // 2
                    for u in range(h):
                        acc[u] = acc[u] + acc[u + h]
                    if m % 2 == 1:
                        acc[0] = acc[0] + acc[m - 1]
                    m = h
            else:
                for u in range(1, m):
                    acc[0] = acc[0] + acc[u]
            r = acc[0].copy()
            m = lanes
            if horizontal == 0:
                for v in range(1, m):
                    r[0] = r[0] + r[v]
            while horizontal > 0 and m > 1:
                h = m // 2
                for v in range(h):
                    r[v] = r[v] + r[v + h] if horizontal == 1 else r[2 * v] + r[2 * v + 1]
                m = h
            out[i, j] = r[0]


def orders():
    """Every order :func:`_dots` tries: (label, arguments after ``out``)."""
    yield "sequential", (0, 1, 1, False, 0)
    for block in (32, 64, 128, 192, 256, 384, 512, 768, 1152):
        yield f"blocks of {block}", (block, 1, 1, False, 0)
    for lanes in (4, 8, 16):
        for accumulators in (1, 2, 3, 4, 6, 8):
            for pairwise in (False, True) if accumulators > 1 else (False,):
                for horizontal, how in enumerate(("in turn", "halving", "adjacent")):
                    yield (f"{lanes} lanes x {accumulators} acc ({'pairwise' if pairwise else 'in turn'}), lanes {how}",
                           (0, lanes, accumulators, pairwise, horizontal))


def search_orders(gen) -> None:
    """Whether any of :func:`orders` gives the slow layout's forward and input gradient at 256x2x2."""
    channels, size = 256, 2
    x = torch.randn(1, channels, size, size, generator=gen)
    w = torch.randn(channels, channels, 3, 3, generator=gen)
    g = torch.randn(1, channels, size, size, generator=gen)
    forward = F.conv2d(x, w, padding=1).view(channels, -1).numpy()
    backward = torch.ops.aten.convolution_backward(g, x, w, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1,
                                                   (True, False, False))[0]
    w2 = w.view(channels, -1).numpy()
    cols_t = np.ascontiguousarray(F.unfold(x, 3, padding=1)[0].numpy().T)  # P x (in * 9)
    w2_t, g_t = np.ascontiguousarray(w2.T), np.ascontiguousarray(g.view(channels, -1).numpy().T)
    # A control, that the search can find an order: the weight gradient (4 terms a weight),
    # which MKL sums in turn, fused (what lib.pruning._sums_as_fma checks at run time).
    with torch.enable_grad():
        leaf = w.clone().requires_grad_()
        (grad,) = torch.autograd.grad(F.conv2d(x, leaf, padding=1), leaf, g)
    out = np.empty(w2.shape, np.float32)
    _dots(g.view(channels, -1).numpy(), cols_t.T.copy(), out, 0, 1, 1, False, 0)
    print(f"  control: the weight gradient (4 terms), in turn: equal {np.array_equal(out, grad.view(channels, -1).numpy())}")
    found = []
    for label, args in orders():
        out = np.empty_like(forward)
        _dots(w2, cols_t, out, *args)
        fwd = int((out != forward).sum())
        cols = np.empty((w2_t.shape[0], g_t.shape[0]), np.float32)
        _dots(w2_t, g_t, cols, *args)
        bwd = torch.equal(F.fold(torch.from_numpy(cols)[None], (size, size), 3, padding=1), backward)
        if fwd == 0 or bwd:
            found.append(label)
        print(f"  {label:<52} forward: {fwd:4d} of {out.size} differ; input gradient equal: {bwd}", flush=True)
    print(f"orders that match MKL at 256x2x2: {', '.join(found) or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--orders", action="store_true", help="also try to reproduce MKL's sums at 256x2x2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False  # the backend SynFlow's taps require (lib.pruning._OuterTaps)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, 1 thread; ms a call (weights rotated over 12 copies, as a network's layers)")
    print(f"{'layer':<12}{'fwd conv':>10}{'W @ cols':>10}{'cols.T@W.T':>12}{'same':>6}"
          f"{'bwd conv':>10}{'W.T @ g':>10}{'g.T @ W':>10}{'same':>6}")
    for channels, size in SHAPES:
        weights = [torch.rand(channels, channels, 3, 3, generator=gen) for _ in range(12)]
        x = torch.randn(1, channels, size, size, generator=gen)
        turn = iter(range(10**9))

        def w():
            return weights[next(turn) % len(weights)]

        cols = F.unfold(x, 3, padding=1)[0]  # (in * 9) x P
        g = torch.randn(1, channels, size, size, generator=gen)
        g2 = g.view(channels, -1)

        def conv_backward(weight):
            return torch.ops.aten.convolution_backward(g, x, weight, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1,
                                                       (True, False, False))[0]

        times = [ms(lambda: F.conv2d(x, w(), padding=1), args.calls),
                 ms(lambda: w().view(channels, -1) @ cols, args.calls),
                 ms(lambda: cols.T @ w().view(channels, -1).T, args.calls),
                 ms(lambda: conv_backward(w()), args.calls),
                 ms(lambda: w().view(channels, -1).T @ g2, args.calls),
                 ms(lambda: g2.T @ w().view(channels, -1), args.calls)]
        w0 = weights[0]
        ref = F.conv2d(x, w0, padding=1).view(channels, -1)
        fwd_same = torch.equal((cols.T @ w0.view(channels, -1).T).T, ref)
        fold = F.fold((g2.T @ w0.view(channels, -1)).T[None], (size, size), 3, padding=1)
        bwd_same = torch.equal(fold, conv_backward(w0))
        print(f"{f'{channels} at {size}x{size}':<12}{times[0]:10.3f}{times[1]:10.3f}{times[2]:12.3f}{str(fwd_same):>6}"
              f"{times[3]:10.3f}{times[4]:10.3f}{times[5]:10.3f}{str(bwd_same):>6}", flush=True)
    if args.orders:
        search_orders(gen)


if __name__ == "__main__":
    main()
