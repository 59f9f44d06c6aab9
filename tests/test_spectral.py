"""The graph metrics against closed forms (metrics.md §5) and an independent reference."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from lib import spectral
from lib.spectral import layer_metrics, model_metrics, summarize, top2_singular_values

TOL = 1e-9
WHOLE = ("mu0", "mu_hat", "delta_s", "delta_r", "delta_r_norm", "narc")


def mask_from_biadjacency(b):
    """A Linear-layer mask (out, in) whose biadjacency (|L| x |R|) is ``b``."""
    return torch.as_tensor(np.asarray(b)).bool().T.contiguous()


def fano():
    lines = [(0, 1, 2), (0, 3, 4), (0, 5, 6), (1, 3, 5), (1, 4, 6), (2, 3, 6), (2, 4, 5)]
    b = np.zeros((7, 7), dtype=bool)
    for i, line in enumerate(lines):
        b[i, list(line)] = True
    return b


def projective_plane(q):
    """Point-line incidence matrix of PG(2, q) for a prime q."""
    pts = []
    for x in range(q):
        for y in range(q):
            pts.append((x, y, 1))
    for x in range(q):
        pts.append((x, 1, 0))
    pts.append((1, 0, 0))
    p = np.array(pts)
    return (p @ p.T) % q == 0  # lines are indexed by the same vectors (duality)


def reference_metrics(b):
    """A direct, slow transcription of metrics.md with full SVDs, written independently."""
    b = np.asarray(b, dtype=float)
    size_l, size_r = b.shape
    b2 = b[b.sum(1) > 0][:, b.sum(0) > 0]
    n_l, n_r = b2.shape
    e = b2.sum()
    out = dict.fromkeys(WHOLE + ("imdb", "imdb_norm"), math.nan)
    if e == 0:
        return out
    dl, dr = e / n_l, e / n_r
    gaps, norms = [], []
    degrees = b2.sum(1)
    for d in np.unique(degrees):
        k = b2[degrees == d]
        k = k[:, k.sum(0) > 0]
        if d < 3 or k.shape[0] < 3:
            continue
        dr_k = k.sum() / k.shape[1]
        if dr_k < 3:
            continue
        s = np.linalg.svd(k, compute_uv=False)
        ub = math.sqrt(d - 1) + math.sqrt(dr_k - 1)
        gaps.append(ub - s[1])
        norms.append((ub - s[1]) / ub)
    if gaps:
        out["imdb"], out["imdb_norm"] = np.mean(gaps), np.mean(norms)
    if dl >= 3 and dr >= 3:
        s = np.linalg.svd(b2, compute_uv=False)
        ub = math.sqrt(dl - 1) + math.sqrt(dr - 1)
        out.update(
            mu0=s[0], mu_hat=s[1], delta_s=2 * math.sqrt(s[0] - 1) - s[1],
            delta_r=ub - s[1], delta_r_norm=(ub - s[1]) / ub,
            narc=((s[1] ** 2 / 4 + 1) * math.sqrt(n_l * n_r) - abs(2 * e - dl / size_r * n_l * n_r))
            / (size_l * size_r),
        )
    return out


def assert_close(got, want, keys, tol=TOL):
    for k in keys:
        if math.isnan(want[k]):
            assert math.isnan(got[k]), f"{k}: expected NaN, got {got[k]}"
        else:
            assert got[k] == pytest.approx(want[k], rel=tol, abs=tol), k


# ------------------------------------------------------------------ closed forms (§5)
@pytest.mark.parametrize("a,b", [(3, 3), (4, 7), (10, 5), (64, 27)])
def test_complete_bipartite(a, b):
    m = layer_metrics(torch.ones(a, b, dtype=torch.bool))  # out=a, in=b: K_{b,a}
    assert m["mu0"] == pytest.approx(math.sqrt(a * b), abs=TOL)
    assert m["mu_hat"] == 0  # s2 of a rank-1 matrix: rounding noise below 1e-5 * s1 is 0
    ramanujan = math.sqrt(a - 1) + math.sqrt(b - 1)
    assert m["delta_r"] == pytest.approx(ramanujan, abs=1e-6)
    assert m["imdb"] == pytest.approx(m["delta_r"], abs=TOL)
    assert m["narc"] == pytest.approx(1 / math.sqrt(a * b) - 1, abs=TOL)
    assert (m["d_left"], m["d_right"], m["edges"]) == (a, b, a * b)


@pytest.mark.parametrize("a,b", [(3, 4), (5, 5), (8, 3)])
def test_two_disjoint_blocks(a, b):
    blocks = torch.block_diag(torch.ones(a, b), torch.ones(a, b)).bool()
    m = layer_metrics(blocks)
    assert m["mu0"] == pytest.approx(math.sqrt(a * b), abs=TOL)
    assert m["mu_hat"] == pytest.approx(math.sqrt(a * b), abs=TOL)
    want = math.sqrt(a - 1) + math.sqrt(b - 1) - math.sqrt(a * b)
    assert m["delta_r"] == pytest.approx(want, abs=TOL)
    assert m["imdb"] == pytest.approx(want, abs=TOL)


def test_fano_plane():
    m = layer_metrics(mask_from_biadjacency(fano()))
    assert m["mu0"] == pytest.approx(3, abs=TOL)
    assert m["mu_hat"] == pytest.approx(math.sqrt(2), abs=TOL)
    assert m["delta_r"] == pytest.approx(math.sqrt(2), abs=TOL)
    assert m["imdb"] == pytest.approx(math.sqrt(2), abs=TOL)
    assert m["narc"] == pytest.approx((1.5 * 7 - 21) / 49, abs=TOL)
    assert m["narc"] == pytest.approx(-0.2142857, abs=1e-7)


def test_fano_plane_padded_with_isolated_vertices():
    b = np.zeros((9, 9), dtype=bool)
    b[:7, :7] = fano()
    m = layer_metrics(mask_from_biadjacency(b))
    assert m["mu0"] == pytest.approx(3, abs=TOL)
    assert m["mu_hat"] == pytest.approx(math.sqrt(2), abs=TOL)
    assert m["delta_r"] == pytest.approx(math.sqrt(2), abs=TOL)
    assert m["imdb"] == pytest.approx(math.sqrt(2), abs=TOL)
    assert m["narc"] == pytest.approx((10.5 - abs(42 - (3 / 9) * 49)) / 81, abs=TOL)
    assert m["narc"] == pytest.approx(-0.1872428, abs=1e-7)
    assert (m["n_left"], m["n_right"], m["size_left"], m["size_right"]) == (7, 7, 9, 9)


def test_matching_is_undefined():
    m = layer_metrics(torch.eye(12, dtype=torch.bool))
    for k in ("delta_r", "imdb", "narc", "mu_hat", "delta_r_norm", "imdb_norm"):
        assert math.isnan(m[k]), k
    assert m["edges"] == 12 and m["d_left"] == 1


@pytest.mark.parametrize("q", [2, 3, 5, 7])
def test_projective_planes_are_ramanujan(q):
    b = projective_plane(q)
    n = q * q + q + 1
    assert b.shape == (n, n) and (b.sum(0) == q + 1).all() and (b.sum(1) == q + 1).all()
    m = layer_metrics(mask_from_biadjacency(b))
    assert m["mu0"] == pytest.approx(q + 1, abs=TOL)
    assert m["mu_hat"] == pytest.approx(math.sqrt(q), abs=TOL)
    assert m["delta_r"] == pytest.approx(math.sqrt(q), abs=TOL)
    assert m["imdb"] == pytest.approx(math.sqrt(q), abs=TOL)


# ------------------------------------------------------------------ conventions
def test_empty_layer_is_undefined_not_zero():
    m = layer_metrics(torch.zeros(8, 8, dtype=torch.bool))
    assert m["edges"] == 0 and m["n_left"] == 0
    assert all(math.isnan(m[k]) for k in WHOLE + ("imdb",))


def test_conv_mask_unfolds_input_and_kernel():
    g = torch.Generator().manual_seed(1)
    conv = torch.rand(16, 8, 3, 3, generator=g) < 0.5
    m = layer_metrics(conv)
    assert (m["size_left"], m["size_right"]) == (8 * 9, 16)
    flat = layer_metrics(conv.reshape(16, -1))
    assert_close(m, flat, WHOLE + ("imdb", "imdb_norm"))


def test_imdb_defined_where_average_degree_is_below_three():
    # 20 left vertices of degree 1 pull d_left under 3; a 5-regular class of 6 left vertices
    # on 6 right vertices (dR = 5) still counts for IMDB.
    b = np.zeros((26, 12), dtype=bool)
    for i in range(6):
        b[i, [(i + k) % 6 for k in range(5)]] = True
    for i in range(20):
        b[6 + i, 6 + i % 6] = True
    m = layer_metrics(mask_from_biadjacency(b))
    assert m["d_left"] < 3
    assert math.isnan(m["delta_r"]) and math.isnan(m["narc"])
    assert m["imdb_classes"] == 1
    s = np.linalg.svd(b[:6, :6].astype(float), compute_uv=False)
    assert m["imdb"] == pytest.approx(2 * math.sqrt(4) - s[1], abs=TOL)


@pytest.mark.parametrize("seed", range(6))
def test_matches_independent_reference_on_random_irregular_masks(seed):
    rng = np.random.default_rng(seed)
    n_l, n_r = rng.integers(20, 120, size=2)
    # irregular: per-row densities vary, so there are many degree classes
    p = rng.uniform(0.02, 0.5, size=(n_l, 1))
    b = rng.random((n_l, n_r)) < p
    got = layer_metrics(mask_from_biadjacency(b))
    assert_close(got, reference_metrics(b), WHOLE + ("imdb", "imdb_norm"))


def test_isolated_vertices_change_nothing_but_narc_normalisation():
    rng = np.random.default_rng(7)
    b = rng.random((60, 40)) < 0.3
    padded = np.zeros((75, 52), dtype=bool)
    padded[np.ix_(rng.permutation(75)[:60], rng.permutation(52)[:40])] = b
    m, mp = layer_metrics(mask_from_biadjacency(b)), layer_metrics(mask_from_biadjacency(padded))
    same = ("n_left", "n_right", "edges", "d_left", "d_right", "mu0", "mu_hat", "delta_s",
            "delta_r", "delta_r_norm", "imdb", "imdb_norm", "imdb_classes")
    assert_close(mp, m, same)
    assert mp["narc"] != pytest.approx(m["narc"], rel=1e-3)
    assert_close(mp, reference_metrics(padded), ("narc",))


# ------------------------------------------------------------------ solvers
def test_dense_and_sparse_solvers_agree_on_a_large_sparse_layer():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2500, 9000, generator=g) < 0.004
    dense = top2_singular_values(x, "dense")
    sparse = top2_singular_values(x, "sparse")
    assert dense == pytest.approx(sparse, rel=1e-6)
    m_dense, m_sparse = layer_metrics(x, "dense"), layer_metrics(x, "sparse")
    assert_close(m_dense, m_sparse, WHOLE + ("imdb",), tol=1e-6)


def test_lanczos_path_matches_full_svd_and_finds_repeated_top():
    g = torch.Generator().manual_seed(4)
    n = spectral.DENSE_EIG_MAX + 100  # Gram larger than the dense-eigensolver limit
    x = torch.rand(n, 3 * n, generator=g) < 0.05
    s = np.linalg.svd(x.double().numpy(), compute_uv=False)
    assert top2_singular_values(x, "dense") == pytest.approx((s[0], s[1]), rel=1e-9)
    twins = torch.block_diag(x, x)  # two identical components: s1 == s2
    s1, s2 = top2_singular_values(twins, "dense")
    assert s2 == pytest.approx(s1, rel=1e-9) and s1 == pytest.approx(s[0], rel=1e-9)


def test_lanczos_path_on_rank_one_and_low_rank_grams():
    n = spectral.DENSE_EIG_MAX + 50
    full = torch.ones(n, 2 * n, dtype=torch.bool)  # complete bipartite: s2 = 0 exactly
    assert top2_singular_values(full, "dense") == pytest.approx((math.sqrt(2 * n * n), 0.0), abs=1e-6)
    rows = torch.zeros(n, 2 * n, dtype=torch.bool)
    rows[: n // 2, :n] = True
    rows[n // 2 :, n:] = True  # two complete blocks of different sizes: rank two
    want = sorted(np.linalg.svd(rows.double().numpy(), compute_uv=False))[::-1][:2]
    assert top2_singular_values(rows, "dense") == pytest.approx(tuple(want), rel=1e-9)


def test_unknown_solver_and_bad_mask():
    with pytest.raises(ValueError, match="solver"):
        top2_singular_values(torch.ones(3, 3), "qr")
    with pytest.raises(ValueError, match="2 dimensions"):
        layer_metrics(torch.ones(5, dtype=torch.bool))


# ------------------------------------------------------------------ model level
def test_model_metrics_and_summary_from_a_mapping():
    masks = {
        "fano": mask_from_biadjacency(fano()),
        "matching": torch.eye(10, dtype=torch.bool),
        "full": torch.ones(4, 6, dtype=torch.bool),
    }
    df = model_metrics(masks)
    assert list(df["layer"]) == ["fano", "matching", "full"]
    assert set(spectral.METRICS) <= set(df.columns)
    s = summarize(df)
    assert s["layers"] == 3 and s["undefined_layers"] == 1 and s["imdb_undefined_layers"] == 1
    full_delta_r = math.sqrt(3) + math.sqrt(5)
    assert s["delta_r"] == pytest.approx((math.sqrt(2) + full_delta_r) / 2, abs=1e-6)
    assert s["narc"] == pytest.approx((-0.2142857142857 + 1 / math.sqrt(24) - 1) / 2, abs=1e-9)
    assert s["realized_density"] == pytest.approx((21 + 10 + 24) / (49 + 100 + 24))


def test_model_metrics_reads_a_model_pruned_with_torch_prune():
    import torch.nn.utils.prune as prune

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 4, 5)
    )
    g = torch.Generator().manual_seed(0)
    masks = {"0": torch.rand(8, 3, 3, 3, generator=g) < 0.5, "3": torch.rand(5, 32, generator=g) < 0.5}
    for name, mask in masks.items():
        prune.custom_from_mask(model.get_submodule(name), "weight", mask)
    from_model = model_metrics(model)
    from_masks = model_metrics(masks)
    pd.testing.assert_frame_equal(from_model, from_masks)
    with pytest.raises(TypeError, match="mapping"):
        model_metrics([1, 2])


def test_narc_literal_vanishes_for_the_whole_left_side():
    b = mask_from_biadjacency(fano())
    whole = spectral.narc_literal(b, range(7))
    assert whole == pytest.approx((1.5 * 7 - 0) / 49, abs=TOL)  # |E - dL/m*|S||N(S)|| = 0
    part = spectral.narc_literal(b, [0, 1])
    # S = two points span 5 lines, 6 edges: (1.5 * sqrt(10) - |6 - 3/7 * 10|) / 49
    assert part == pytest.approx((1.5 * math.sqrt(10) - abs(6 - 3 / 7 * 10)) / 49, abs=TOL)
    with pytest.raises(ValueError, match="left_subset"):
        spectral.narc_literal(b, [9])


@pytest.mark.parametrize("dtype", [torch.int8, torch.float32])
def test_gram_is_exact_in_either_gemm(monkeypatch, dtype):
    """Both GEMMs that gemm_dtype() may pick on a CPU give the exact integer Gram matrix."""
    monkeypatch.setattr(spectral, "gemm_dtype", lambda: dtype)
    x = torch.rand(300, 5000, generator=torch.Generator().manual_seed(5)) < 0.3
    want = x.to(torch.float64) @ x.to(torch.float64).T
    got = spectral._gram(x.to(torch.int8))
    assert got.dtype == torch.float64 and torch.equal(got, want)


@pytest.mark.parametrize("shape", [(1, 1), (5, 64), (7, 65), (130, 70), (70, 130), (200, 1000), (1000, 200)])
def test_bit_gram_is_the_exact_gram_of_the_smaller_side(shape):
    """Popcounts of bit-packed rows or columns (widths off and on multiples of 64) give the
    exact integers of the float64 Gram, with or without half of the rows on a helper."""
    from concurrent.futures import ThreadPoolExecutor

    x = (torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape))) < 0.3).to(torch.int8)
    side = x if shape[0] <= shape[1] else x.T
    want = (side.to(torch.float64) @ side.to(torch.float64).T).numpy()
    with ThreadPoolExecutor(1) as helper:
        for dtype in (np.float64, np.float32):
            assert np.array_equal(spectral._fast_gram(x, dtype=dtype), want)
            assert np.array_equal(spectral._fast_gram(x, helper, dtype), want)
    # the Lanczos operator on a float32 Gram: float64 sums, the same bits with a helper
    g = spectral._fast_gram(x, dtype=np.float32)
    v = torch.randn(g.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alone = spectral._RowHalves(g)(v)
    np.testing.assert_allclose(alone.numpy(), want @ v.numpy(), rtol=1e-13, atol=1e-12)
    with ThreadPoolExecutor(1) as helper:
        assert torch.equal(spectral._RowHalves(g, helper)(v), alone)


def test_compiled_products_match_float64():
    """``B^T B v`` through the int8 matrix and through its CSR structure, halves or whole."""
    from lib import spectral_kernels

    g = torch.Generator().manual_seed(3)
    for rows, cols, density in ((403, 257, 0.3), (1000, 300, 0.01), (3, 5, 0.5)):
        b = (torch.rand(rows, cols, generator=g) < density).to(torch.int8)
        v = torch.randn(cols, generator=g, dtype=torch.float64)
        want = b.to(torch.float64).T @ (b.to(torch.float64) @ v)
        dense, sparse = np.zeros(cols), np.zeros(cols)
        spectral_kernels.gram_dense(b.numpy(), v.numpy(), dense)
        spectral_kernels.gram_csr(*spectral_kernels.csr_from_dense(b.numpy()), v.numpy(), sparse)
        np.testing.assert_allclose(dense, want.numpy(), rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(sparse, want.numpy(), rtol=1e-13, atol=1e-12)
        for is_sparse in (False, True):
            got = spectral._GramOperator(b, int(b.sum()), sparse=is_sparse)(v)
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-13, atol=1e-12)


def test_lapack_without_the_gil_gives_scipys_bits():
    """The ctypes call of ``dsyevr`` is scipy's own call of it: the same two eigenvalues."""
    from scipy.linalg import lapack

    if spectral._openblas_threads_local() is None:
        pytest.skip("scipy's LAPACK is not OpenBLAS here: torch's eigvalsh is used instead")
    for n in (2, 3, 17, 120, 300):
        x = (torch.rand(n, 2 * n, generator=torch.Generator().manual_seed(n)) < 0.2).to(torch.float64)
        g = (x @ x.T).numpy()
        w, _, found, _, info = lapack.dsyevr(g.copy(), compute_v=0, range="I", il=n - 1, iu=n)
        assert info == 0 and found == 2
        assert spectral._dsyevr_top2(g.copy()) == (float(w[1]), float(w[0]))


# ------------------------------------------------------------------ fast solver vs the exact oracle
# The fast solver must give the exact solver's s1 and s2 to 1e-9 relative (both give s2 = 0
# exactly where B has rank one).
FAST_TOL = 1e-9


def clustered(rng, n_l, n_r, density):
    """SNIP-like: heavy-tailed, clustered row and column propensities."""
    p = rng.pareto(1.5, size=(n_l, 1)) + 0.05
    q = rng.pareto(1.5, size=(1, n_r)) + 0.05
    pq = p * q
    return rng.random((n_l, n_r)) < np.minimum(1.0, pq * density / pq.mean())


def realistic_masks():
    """Biadjacency matrices (|L| x |R|) of the kinds of layers the workbook measures."""
    rng = np.random.default_rng(11)
    x = rng.random((180, 120)) < 0.08
    padded = np.zeros((230, 150), dtype=bool)
    padded[np.ix_(rng.permutation(230)[:180], rng.permutation(150)[:120])] = x
    erk = np.concatenate([rng.random((150, 90)) < 0.02, rng.random((150, 90)) < 0.3])
    conv = (rng.random((64, 16, 3, 3)) < 0.2).reshape(64, -1).T  # (in*kh*kw) x out
    two_blocks = np.zeros((90, 140), dtype=bool)
    two_blocks[:30, :60] = True
    two_blocks[30:, 60:] = True
    return {
        "uniform": rng.random((400, 300)) < 0.05,
        "uniform dense": rng.random((300, 260)) < 0.4,
        "erk-like": erk,
        "snip-like": clustered(rng, 350, 280, 0.06),
        "twins": np.kron(np.eye(2, dtype=bool), x),  # two identical components: s1 == s2
        "complete": np.ones((120, 80), dtype=bool),  # rank one: s2 = 0
        "two complete blocks": two_blocks,  # rank two, different sizes
        "conv": conv,
        "isolated vertices": padded,
        "wide": (rng.random((40, 500)) < 0.1),
    }


def assert_top2_close(got, want):
    assert got[0] == pytest.approx(want[0], rel=FAST_TOL)
    assert got[1] == pytest.approx(want[1], rel=FAST_TOL, abs=0)  # 0 == 0 for rank one


@pytest.mark.parametrize("route", ["gram", "gram-lanczos", "sparse", "dense"])
def test_every_fast_route_matches_the_oracle(monkeypatch, route):
    """Each way the fast solver can take (forced here) on each kind of mask, whole layer."""
    if route == "gram-lanczos":
        monkeypatch.setattr(spectral, "FAST_DENSE_EIG_MAX", 2)  # Lanczos on the exact Gram
    monkeypatch.setattr(spectral, "_plan", lambda r, c, nnz: (route.split("-")[0], 0.0))
    for name, b in realistic_masks().items():
        x = torch.from_numpy(b[b.any(1)][:, b.any(0)].astype(np.int8))
        want = spectral._top2_exact(x)
        assert_top2_close(spectral._top2_fast(x), want), name
        if route in ("sparse", "dense"):  # products split over a helper thread: same bits
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1) as helper:
                assert spectral._top2_fast(x, helper=helper) == spectral._top2_fast(x), name


def test_repeated_top_singular_value_is_found_by_lanczos(monkeypatch):
    """Single-vector Lanczos sees one copy of a repeated s1; the deflated second run must find
    the other: s2 == s1 for two identical components, on both Lanczos routes."""
    rng = np.random.default_rng(5)
    x = rng.random((200, 120)) < 0.08
    twins = torch.from_numpy(np.kron(np.eye(3, dtype=bool), x).astype(np.int8))  # three copies
    s = np.linalg.svd(x.astype(float), compute_uv=False)
    for route in ("sparse", "dense"):
        monkeypatch.setattr(spectral, "_plan", lambda r, c, nnz, route=route: (route, 0.0))
        s1, s2 = spectral._top2_fast(twins)
        assert s1 == pytest.approx(s[0], rel=FAST_TOL) and s2 == pytest.approx(s[0], rel=FAST_TOL)


@pytest.mark.parametrize("name", list(realistic_masks()))
def test_fast_layer_metrics_match_the_oracle(name):
    """Every metric, IMDB classes included, from the default (fast) and the exact solver."""
    mask = mask_from_biadjacency(realistic_masks()[name])
    fast, exact = layer_metrics(mask), layer_metrics(mask, "exact")
    if name == "complete":
        assert fast["mu_hat"] == exact["mu_hat"] == 0.0
    for k in METRICS_TO_COMPARE + ("narc",):
        if math.isnan(exact[k]):
            assert math.isnan(fast[k]), k
        else:
            assert fast[k] == pytest.approx(exact[k], rel=FAST_TOL, abs=0), k
    assert fast["imdb_classes"] == exact["imdb_classes"]


METRICS_TO_COMPARE = ("mu0", "mu_hat", "delta_s", "delta_r", "delta_r_norm", "imdb", "imdb_norm", "delta_s_imdb")


def test_the_plan_takes_lanczos_on_a_large_sparse_layer_and_matches_the_oracle():
    g = torch.Generator().manual_seed(8)
    x = torch.rand(3000, 1500, generator=g) < 0.01
    b = x.to(torch.int8)
    assert spectral._plan(3000, 1500, int(x.sum()))[0] == "sparse"
    assert_top2_close(top2_singular_values(x), spectral._top2_exact(b))


def test_reduced_resnet34_masks_match_the_oracle_on_every_layer():
    from lib.models import build_model
    from lib.pruning import erk_masks, global_mask, score

    model = build_model("resnet34", width=0.25, seed=0)
    masks = {
        "Rand 0.1": global_mask(score(model, "Rand", seed=0), 0.1),
        "ERK 0.4": erk_masks(model, 0.4, seed=0),
    }
    for label, m in masks.items():
        fast, exact = model_metrics(m), model_metrics(m, "exact")
        assert (fast["imdb_classes"] == exact["imdb_classes"]).all(), label
        # Layers kept whole (ERK's small first layers) are complete bipartite graphs: s2 = 0.
        complete = (exact["edges"] == exact["size_left"] * exact["size_right"]).to_numpy()
        assert (fast["mu_hat"][complete] == 0).all() and (exact["mu_hat"][complete] == 0).all()
        for k in METRICS_TO_COMPARE + ("narc",):
            np.testing.assert_allclose(fast[k], exact[k], rtol=FAST_TOL, atol=0, err_msg=f"{label}: {k}")


def test_results_are_bit_identical_across_calls_and_worker_counts(monkeypatch):
    masks = {name: mask_from_biadjacency(b) for name, b in realistic_masks().items()}
    masks["big sparse"] = torch.rand(600, 2500, generator=torch.Generator().manual_seed(1)) < 0.01
    first = model_metrics(masks)
    pd.testing.assert_frame_equal(model_metrics(masks), first, check_exact=True)
    pd.testing.assert_frame_equal(model_metrics(masks, workers=1), first, check_exact=True)
    # every problem run alone: Grams on two torch threads, Lanczos products split over two
    monkeypatch.setattr(spectral, "SOLO_COST", 0.0)
    pd.testing.assert_frame_equal(model_metrics(masks), first, check_exact=True)
    one, two = layer_metrics(masks["snip-like"]), layer_metrics(masks["snip-like"])
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(one.values(), two.values()))


# ------------------------------------------------------------------ bad masks (issue 9)
BAD_MASKS = {
    "scores": (torch.full((10, 10), 0.5), "found 0.5"),
    "nan": (torch.where(torch.eye(10, dtype=torch.bool), torch.nan, 1.0), "found nan"),
    "twos": (torch.eye(10) * 2, "found 2"),
}


@pytest.mark.parametrize("kind", list(BAD_MASKS))
def test_a_bad_mask_gets_a_one_line_error_naming_the_layer(kind):
    bad, found = BAD_MASKS[kind]
    with pytest.raises(ValueError) as err:
        layer_metrics(bad, name="fc1")
    msg = str(err.value)
    assert "'fc1'" in msg and found in msg and "global_mask" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="'<mask>'"):
        layer_metrics(bad)
    good = torch.ones(4, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match=f"layer 'features.3' .*{found}"):
        model_metrics({"features.0": good, "features.3": bad})


def test_integer_and_float_0_1_masks_are_accepted():
    b = fano()
    want = layer_metrics(mask_from_biadjacency(b))
    for dtype in (torch.uint8, torch.int64, torch.float32, torch.float64):
        got = layer_metrics(mask_from_biadjacency(b).to(dtype))
        assert_close(got, want, WHOLE + ("imdb",))


# ------------------------------------------------------------------ module structure
def test_spectral_does_not_import_pruning():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(spectral.__file__).read_text())
    imported = [
        alias.name if isinstance(node, ast.Import) else f"{node.module}"
        for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [m for m in imported if m and "pruning" in m]
    assert isinstance(spectral.METRICS_VERSION, int) and spectral.METRICS_VERSION >= 1
