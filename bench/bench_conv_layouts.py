"""ResNet-34's 3x3 convolutions at batch 1, one thread: torch's native ("slow") convolution
against the same products as matrix products in the other layout, with whether each equals it
bit for bit.

SynFlow's rounds on full-size ResNet-34 spend most of their forward and backward time in
layer3 (256 channels at 2x2): its convolution runs as one BLAS product with 4 columns, which
this machine's MKL does at a fraction of the pace it reaches on layer4's single column. The
transposed layout (``cols.T @ W.T``; ``g.T @ W`` for the input gradient) is faster there, but
sums in another order, so its masks would not be the current ones bit for bit: this prints
both, per shape, so that the choice can be rechecked on another machine or BLAS.

    .venv/bin/python bench/bench_conv_layouts.py
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
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


if __name__ == "__main__":
    main()
