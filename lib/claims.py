"""The paper's four claims (experiments.md), tested with numbers instead of by eye.

Reads the tidy ``results`` table (one row per mask and seed: accuracy joined with the
model-level metrics), the ``layers`` table of :func:`lib.workbook.collect`, and optionally the
density-matched controls of :mod:`lib.controls`; returns one tidy table, one row per (claim,
dataset, model, density, statistic) with ``value``, ``n``, an exact permutation ``p_value`` and a
seed-bootstrap interval (``ci_low``, ``ci_high``):

1. ``delta_r`` rises with density: Kendall tau of (density, ``delta_r_norm``) over all masks,
   and the same within each method (stratified); but does not rank methods at a fixed density:
   tau of (accuracy, ``delta_r_norm``) across methods at each density, and stratified.
2. IMDB ranks methods by accuracy at a fixed density: tau of (accuracy, ``imdb_norm``), per
   density and stratified; "strongest at low density": the slope of the per-density tau
   against log10(density) (negative = stronger at low density, as the claim says).
3. ``narc <= 0`` for Rand and ERK ("always"): the share of such masks (model-level mean) and of
   their defined layers with ``narc <= 0``. A share below 1 refutes "always"; no p-value.
4. Without skip connections NaRC relates to accuracy (Fig. 2): per network, tau of (``narc``,
   accuracy) per density and stratified; the claim itself is the contrast tau(no skip) minus
   tau(skip) within each density, pooled (negative = NaRC relates more negatively to accuracy
   without skips, the paper's reading). The pooled-over-all-masks tau is kept for reference, but
   NaRC and accuracy both move with density, so it measures the density confound.

Conventions. Kendall's tau is scipy's default tau-b. A method's point at a density is the
mean over its seeds (of rows where both variables are defined). p-values are two-sided
permutation p-values, P(|S| >= |S_obs|) for the concordance sum S: exact (every permutation of
one variable's values over the other's, ties included) for up to :data:`EXACT_MAX_N` points
per stratum, else Monte Carlo. "Stratified" statistics compare pairs only within a density
(or within a method): tau_s = sum_d S_d / sum_d D_d, with D_d tau-b's denominator; its exact
null is the convolution of the per-stratum nulls. Intervals are 95% percentile intervals of a
bootstrap that resamples seeds within each (method, density) cell (and a control's draws
within each mask); they show seed-to-seed spread only, not which methods were chosen (an
interval that excludes 0 is no test: read p), and are NaN where every cell has one seed.
Every random draw comes from a numpy Generator seeded by ``seed`` and the row's keys, so a
table is reproducible and independent of row order. With controls, each tau(accuracy, metric)
gets the same tau on the controls and the difference (real minus control, swap-permutation p).
:func:`verdicts` picks the headline test per claim and model, with Holm-adjusted p-values.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .settings import KEYS

ACC = "test_acc"
COLUMNS = ["claim", "dataset", "arch", "skip", "density", "statistic", "value", "n"]
EXTRA_COLUMNS = ["p_value", "ci_low", "ci_high", "p_method", "seeds", "strata", "n_undefined",
                 "undefined_layers", "note"]
ALPHA = 0.05
# Exact enumeration of a stratum's permutations up to this many points (8! = 40,320).
EXACT_MAX_N = 8
# Exact enumeration of the 2**units swap patterns of a paired contrast up to this many units.
EXACT_MAX_SWAPS = 16
N_BOOT = 2000
N_PERM = 2000
CI = (2.5, 97.5)
# Which results column counts the layers where each metric is undefined (lib.spectral.summarize).
UNDEFINED_LAYERS = {"delta_r_norm": "undefined_layers", "narc": "undefined_layers",
                    "imdb_norm": "imdb_undefined_layers"}
CONTROL = "density-matched controls"
C1_RISE = "1: delta_r rises with density"
C1_RANK = "1: delta_r ranks methods at fixed density"
C2 = "2: imdb ranks methods at fixed density"
C3 = "3: narc <= 0 for Rand and ERK"
C4 = "4: narc relates to accuracy (Fig. 2)"


# ------------------------------------------------------------------------------ Kendall's tau
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def _pair_signs(v: np.ndarray) -> np.ndarray:
    """sign(v_i - v_j) for every pair i < j along the last axis."""
    i, j = _pairs(v.shape[-1])
    return np.sign(v[..., i] - v[..., j])


def _s_and_d(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concordance sum ``S`` and tau-b denominator ``D`` over the last axis (any leading axes)."""
    sx, sy = _pair_signs(x), _pair_signs(y)
    n0 = sx.shape[-1]
    ties_x, ties_y = (sx == 0).sum(-1), (sy == 0).sum(-1)
    return (sx * sy).sum(-1), np.sqrt((n0 - ties_x) * (n0 - ties_y))


def _ratio(s, d):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, s / np.where(d > 0, d, 1), np.nan)


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (scipy's default) of the pairs where both are defined; NaN where fewer
    than 3 pairs are defined or one side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))
    if ok.sum() < 3:
        return math.nan
    s, d = _s_and_d(x[ok], y[ok])
    return float(_ratio(s, d))


@functools.cache
def _permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int64)


@functools.cache
def _mahonian(n: int) -> np.ndarray:
    """P(S = s) for s = -P..P (index s + P) over permutations of n untied values."""
    prob = np.ones(1)
    for k in range(2, n + 1):  # the k-th value adds 0..k-1 inversions, equally likely
        prob = np.convolve(prob, np.full(k, 1.0 / k))  # probabilities: counts (n!) would overflow
    total_pairs = n * (n - 1) // 2  # index of prob: inversions 0..P; S = P - 2 * inversions
    out = np.zeros(2 * total_pairs + 1)
    out[total_pairs - 2 * np.arange(total_pairs + 1) + total_pairs] = prob
    return out


def exact_null(x, y) -> np.ndarray | None:
    """The exact null distribution of Kendall's ``S`` for the points ``(x, y)``: ``P(S = s)``
    at index ``s + n(n-1)/2``, over all permutations of ``y``'s values across ``x`` (ties in
    either variable count as they are). ``None`` where that is infeasible (more than
    :data:`EXACT_MAX_N` points with ties)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    total_pairs = n * (n - 1) // 2
    if n <= EXACT_MAX_N:
        sx = _pair_signs(x)
        s = (_pair_signs(y[_permutations(n)]) * sx).sum(-1).astype(np.int64)
        return np.bincount(s + total_pairs, minlength=2 * total_pairs + 1) / len(s)
    if len(np.unique(x)) == n and len(np.unique(y)) == n:
        return _mahonian(n)
    return None


def _convolve_nulls(nulls: list[np.ndarray]) -> np.ndarray:
    out = np.ones(1)
    for null in nulls:
        out = np.convolve(out, null)
    return out


def _two_sided(null: np.ndarray, s_obs: float) -> float:
    """P(|S| >= |s_obs|) for a null over the integer grid centred at its middle index."""
    half = (len(null) - 1) // 2
    s = np.arange(len(null)) - half
    return float(min(1.0, null[np.abs(s) >= abs(round(float(s_obs)))].sum()))


@dataclass
class Outcome:
    """A statistic with its permutation p-value and how that was found."""

    value: float
    p: float
    n: int
    strata: int
    method: str


def _keyed_rng(seed: int, *keys) -> np.random.Generator:
    """A Generator for one statistic: ``seed`` and the row's keys, independent of row order."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(str(k) for k in keys)).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))


def stratified_tau(strata: list[tuple[np.ndarray, np.ndarray]], n_perm: int = N_PERM,
                   rng: np.random.Generator | None = None) -> Outcome:
    """Kendall's tau over pairs within each stratum only: ``sum S_d / sum D_d``, with its
    two-sided permutation p-value (each stratum's ``y`` permuted over its ``x``, independently).

    ``strata``: ``(x, y)`` arrays per stratum, NaN-free. Strata with fewer than 3 points or a
    constant side are left out. Exact (convolution of the per-stratum exact nulls) where every
    stratum allows it (:func:`exact_null`), else ``n_perm`` Monte Carlo permutations (``rng``).
    A single stratum gives Kendall's tau-b and its exact p-value.
    """
    used = []
    for x, y in strata:
        x, y = np.asarray(x, float), np.asarray(y, float)
        if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            used.append((x, y))
    if not used:
        return Outcome(math.nan, math.nan, 0, 0, "")
    parts = [_s_and_d(x, y) for x, y in used]
    s_obs, d_obs = sum(float(s) for s, _ in parts), sum(float(d) for _, d in parts)
    n = sum(len(x) for x, _ in used)
    value = s_obs / d_obs
    nulls = [exact_null(x, y) for x, y in used]
    if all(null is not None for null in nulls):
        return Outcome(value, _two_sided(_convolve_nulls(nulls), s_obs), n, len(used), "exact")
    rng = rng if rng is not None else np.random.default_rng(0)
    s_null = np.zeros(n_perm)
    for x, y in used:
        # Integer ranks keep every sign(y_i - y_j), ties included, and int arithmetic is 3x faster.
        sx = _pair_signs(x).astype(np.int8)
        ry = rankdata(y, method="dense").astype(np.int32)
        i, j = _pairs(len(x))
        for start in range(0, n_perm, 256):  # chunks bound the (permutations, pairs) matrix
            rows = min(256, n_perm - start)
            perms = rng.permuted(np.tile(ry, (rows, 1)), axis=1)
            s_null[start:start + rows] += (np.sign(perms[:, i] - perms[:, j]).astype(np.int8) * sx).sum(
                -1, dtype=np.int64)
    p = (1 + np.sum(np.abs(s_null) >= abs(s_obs) - 1e-9)) / (n_perm + 1)
    return Outcome(value, float(p), n, len(used), f"monte carlo ({n_perm})")


def kendall_test(x, y, n_perm: int = N_PERM, rng: np.random.Generator | None = None) -> Outcome:
    """Kendall's tau-b of the defined pairs with its two-sided permutation p-value (exact for
    up to :data:`EXACT_MAX_N` points, or for untied data of any size)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))
    return stratified_tau([(x[ok], y[ok])], n_perm, rng)


def slope_test(density, values) -> Outcome:
    """OLS slope of ``values`` against log10(``density``) (the trend of a per-density
    statistic), with the exact permutation p-value of the slope (``values`` permuted over the
    densities; Monte Carlo above :data:`EXACT_MAX_N` densities is not provided: NaN)."""
    x, v = np.log10(np.asarray(density, float)), np.asarray(values, float)
    ok = ~np.isnan(v)
    x, v = x[ok], v[ok]
    k = len(v)
    if k < 3 or np.ptp(x) == 0:
        return Outcome(math.nan, math.nan, k, k, "")
    value = float(_slopes(x, v[None, :])[0])
    if k > EXACT_MAX_N:
        return Outcome(value, math.nan, k, k, "")
    null = _slopes(x, v[_permutations(k)])
    p = float(np.mean(np.abs(null) >= abs(value) - 1e-12))
    return Outcome(value, p, k, k, "exact")


def _slopes(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """OLS slopes of each row of ``v`` (..., k) against ``x`` (k,)."""
    xc = x - x.mean()
    return ((v - v.mean(-1, keepdims=True)) * xc).sum(-1) / (xc**2).sum()


def paired_contrast(arm_a: list[tuple[np.ndarray, np.ndarray]], arm_b: list[tuple[np.ndarray, np.ndarray]],
                    n_perm: int = N_PERM, rng: np.random.Generator | None = None) -> Outcome:
    """Stratified tau of arm ``b`` minus that of arm ``a``, with a swap-permutation p-value.

    Both arms list ``(x, y)`` per stratum over the same units in the same order (methods at one
    density, seen in two networks, or a metric and its density-matched control). Null: within
    each (stratum, unit), the two arms' points are exchangeable once each arm's values are
    replaced by their ranks within the stratum (so a network's or a control's overall level
    does not count). Exact over all ``2**units`` swaps up to :data:`EXACT_MAX_SWAPS` units,
    else ``n_perm`` random swaps. With 5 units the smallest exact p is 2/32: one density alone
    can never reach 0.05.
    """
    ranked = []
    for (xa, ya), (xb, yb) in zip(arm_a, arm_b):
        if len(xa) != len(xb):
            raise ValueError("paired_contrast needs the same units in both arms of each stratum")
        if len(xa) >= 3:
            ranked.append(np.stack([rankdata(xa), rankdata(ya), rankdata(xb), rankdata(yb)]))
    if not ranked:
        return Outcome(math.nan, math.nan, 0, 0, "")

    def contrast(swaps: list[np.ndarray]) -> np.ndarray:
        sa = da = sb = db = 0.0
        for r, sw in zip(ranked, swaps):  # sw: (patterns, units) bool
            s1, d1 = _s_and_d(np.where(sw, r[2], r[0]), np.where(sw, r[3], r[1]))  # arm a after swaps
            s2, d2 = _s_and_d(np.where(sw, r[0], r[2]), np.where(sw, r[1], r[3]))  # arm b
            sa, da, sb, db = sa + s1, da + d1, sb + s2, db + d2
        return _ratio(sb, db) - _ratio(sa, da)

    sizes = [r.shape[1] for r in ranked]
    value = float(contrast([np.zeros((1, m), bool) for m in sizes])[0])
    if math.isnan(value):
        return Outcome(math.nan, math.nan, sum(sizes), len(sizes), "")
    units = sum(sizes)
    if units <= EXACT_MAX_SWAPS:
        bits = ((np.arange(2**units)[:, None] >> np.arange(units)) & 1).astype(bool)
        method = "exact"
    else:
        rng = rng if rng is not None else np.random.default_rng(0)
        bits = rng.random((n_perm, units)) < 0.5
        method = f"monte carlo ({n_perm})"
    splits = np.split(bits, np.cumsum(sizes)[:-1], axis=1)
    null = contrast(splits)
    null = null[~np.isnan(null)]
    hits = np.sum(np.abs(null) >= abs(value) - 1e-12)
    p = hits / len(null) if method == "exact" else (1 + hits) / (len(null) + 1)
    return Outcome(value, float(p), units, len(sizes), method)


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p, float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# ------------------------------------------------------------------------------ cells and bootstrap
@dataclass
class _Stratum:
    """One stratum (a density, or a method): its units (methods, or densities) and, per unit,
    the rows (seeds) of ``(x, y)`` and optionally a control's draws of ``x``."""

    key: object
    units: list
    rows: list[np.ndarray]  # per unit: (seeds, 2)
    draws: list[np.ndarray | None]  # per unit: (seeds, draws) or None
    undefined: int = 0
    undefined_layers: float = math.nan
    seeds: int = 0
    point: np.ndarray = field(default=None)  # (units, 3): x, y, control x
    boot: np.ndarray | None = None  # (B, units, 3)

    def arm(self, which: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) per unit: column ``which`` (0: the metric, 2: its control) against y."""
        return self.point[:, which], self.point[:, 1]


def _unit_point(rows: np.ndarray, draws: np.ndarray | None) -> np.ndarray:
    ctrl = np.nanmean(np.nanmean(draws, 1)) if draws is not None else math.nan
    return np.array([rows[:, 0].mean(), rows[:, 1].mean(), ctrl])


def _unit_boot(rows: np.ndarray, draws: np.ndarray | None, n_boot: int, rng) -> np.ndarray:
    """(B, 3) bootstrap means: seeds resampled with replacement, and each chosen seed's
    control draws resampled too."""
    k = len(rows)
    idx = rng.integers(0, k, (n_boot, k))
    xy = rows[idx].mean(1)
    ctrl = np.full(n_boot, np.nan)
    if draws is not None:
        n_draws = draws.shape[1]
        pick = rng.integers(0, n_draws, (n_boot, k, n_draws))
        with warnings.catch_warnings():  # a resample of only undefined draws: NaN, dropped later
            warnings.simplefilter("ignore", RuntimeWarning)
            ctrl = np.nanmean(np.nanmean(draws[idx[..., None], pick], -1), -1)
    return np.column_stack([xy, ctrl])


def _strata(df: pd.DataFrame, x: str, y: str, stratum: str, unit: str, n_boot: int, seed: int,
            keys: tuple, controls: dict | None = None) -> list[_Stratum]:
    """Group ``df`` (one model) into strata of units of seed rows, with point estimates and
    seed-bootstrap replicates. ``controls``: {row index: array of the control's draws of x}."""
    xs, ys = df[x].to_numpy(float), df[y].to_numpy(float)
    defined = ~(np.isnan(xs) | np.isnan(ys))
    if controls is not None:
        defined &= np.array([i in controls and bool(np.isfinite(controls[i]).any()) for i in df.index])
    s_codes, s_keys = pd.factorize(df[stratum], sort=True)
    u_codes, u_keys = pd.factorize(df[unit], sort=True)
    s_keys, u_keys = s_keys.tolist(), u_keys.tolist()
    layer_col = UNDEFINED_LAYERS.get(x if x != "density" else y)
    undefined_layers = df[layer_col].to_numpy(float) if layer_col in df else None
    index = df.index.to_numpy()
    out = []
    for si, key in enumerate(s_keys):
        in_s = s_codes == si
        st = _Stratum(key=key, units=[], rows=[], draws=[], undefined=int((in_s & ~defined).sum()))
        if undefined_layers is not None:
            st.undefined_layers = float(np.nansum(undefined_layers[in_s]))
        for ui in np.unique(u_codes[in_s & defined]):
            rows = np.flatnonzero(in_s & defined & (u_codes == ui))
            st.units.append(u_keys[ui])
            st.rows.append(np.column_stack([xs[rows], ys[rows]]))
            st.draws.append(_padded([controls[i] for i in index[rows]]) if controls is not None else None)
        if not st.units:
            continue
        st.seeds = max(len(r) for r in st.rows)
        st.point = np.stack([_unit_point(r, d) for r, d in zip(st.rows, st.draws)])
        if st.seeds > 1 or any(d is not None and d.shape[1] > 1 for d in st.draws):
            rng = _keyed_rng(seed, "bootstrap", *keys, x, y, stratum, key)
            st.boot = np.stack([_unit_boot(r, d, n_boot, rng) for r, d in zip(st.rows, st.draws)], 1)
        out.append(st)
    return out


def _padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack 1-D arrays of draws, NaN-padded to the longest (masks may have different counts)."""
    out = np.full((len(arrays), max(len(a) for a in arrays)), np.nan)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    reps = np.asarray(replicates, float)
    reps = reps[~np.isnan(reps)]
    if len(reps) < 10:
        return math.nan, math.nan
    lo, hi = np.percentile(reps, CI)
    return float(lo), float(hi)


def _boot_tau(strata: list[_Stratum], which: int = 0) -> np.ndarray | None:
    """Bootstrap replicates of the stratified tau (one stratum: its tau) of column ``which``
    (0: the metric, 2: its control) against y. None where no stratum has several seeds."""
    used = [st for st in strata if len(st.units) >= 3]
    if not used or all(st.boot is None for st in used):
        return None
    n_boot = next(st.boot.shape[0] for st in used if st.boot is not None)
    s_tot = d_tot = 0.0
    for st in used:
        b = st.boot if st.boot is not None else np.broadcast_to(st.point, (n_boot, *st.point.shape))
        s, d = _s_and_d(b[..., which], b[..., 1])
        s_tot, d_tot = s_tot + s, d_tot + d
    return _ratio(s_tot, d_tot)


# ------------------------------------------------------------------------------ the table
def _row(claim, dataset, arch, skip, density, statistic, value, n, **extra) -> dict:
    row = dict(zip(COLUMNS, (claim, dataset, arch, skip, density, statistic, value, n)))
    row.update({k: extra.get(k, math.nan) for k in EXTRA_COLUMNS})
    if not isinstance(row["note"], str):
        row["note"] = ""
    if not isinstance(row["p_method"], str):
        row["p_method"] = ""
    return row


def _test_fields(test: Outcome, ci=(math.nan, math.nan)) -> dict:
    return dict(p_value=test.p, p_method=test.method, strata=test.strata, ci_low=ci[0], ci_high=ci[1])


def _family(rows: list, claim: str, model_keys: tuple, strata: list[_Stratum], statistic: str,
            n_perm: int, seed: int, paired: list[_Stratum] | None = None, per_stratum: bool = True) -> None:
    """Per-stratum and stratified rows of tau(x, y); with ``paired`` (the same strata limited to
    the masks that have controls, column 2 holding the controls' mean), also the controls' tau
    and the real-minus-control contrast."""
    dataset, arch, skip = model_keys

    def add(density, name, test, ci, sts):
        rows.append(_row(claim, dataset, arch, skip, density, name, test.value, test.n, **_test_fields(test, ci),
                         **_counts(sts)))

    ctrl_name, minus_name = f"{statistic} of {CONTROL}", f"difference: {statistic} minus {CONTROL}'"
    by_key = {st.key: st for st in paired or []}
    for st in strata if per_stratum else []:
        test = stratified_tau([st.arm(0)], n_perm, _keyed_rng(seed, "perm", *model_keys, statistic, st.key))
        add(st.key, statistic, test, _tau_ci([st], 0), [st])
        if st.key in by_key:
            pst = by_key[st.key]
            test = stratified_tau([pst.arm(2)], n_perm, _keyed_rng(seed, "perm", *model_keys, ctrl_name, st.key))
            add(st.key, ctrl_name, test, _tau_ci([pst], 2), [pst])
            test = paired_contrast([pst.arm(2)], [pst.arm(0)], n_perm,
                                   _keyed_rng(seed, "swap", *model_keys, minus_name, st.key))
            add(st.key, minus_name, test, _contrast_ci([pst], [pst], 2, 0), [pst])
    test = stratified_tau([st.arm(0) for st in strata], n_perm,
                          _keyed_rng(seed, "perm", *model_keys, "stratified " + statistic))
    add("all", f"stratified {statistic}", test, _tau_ci(strata, 0), strata)
    if paired:
        test = stratified_tau([st.arm(2) for st in paired], n_perm,
                              _keyed_rng(seed, "perm", *model_keys, "stratified " + ctrl_name))
        add("all", f"stratified {ctrl_name}", test, _tau_ci(paired, 2), paired)
        test = paired_contrast([st.arm(2) for st in paired], [st.arm(0) for st in paired], n_perm,
                               _keyed_rng(seed, "swap", *model_keys, "stratified " + minus_name))
        add("all", f"stratified {minus_name}", test, _contrast_ci(paired, paired, 2, 0), paired)


def _counts(strata: list[_Stratum]) -> dict:
    layers = [st.undefined_layers for st in strata if not math.isnan(st.undefined_layers)]
    return dict(seeds=max((st.seeds for st in strata), default=0),
                n_undefined=sum(st.undefined for st in strata),
                undefined_layers=float(sum(layers)) if layers else math.nan)


def _tau_ci(strata: list[_Stratum], which: int) -> tuple[float, float]:
    reps = _boot_tau(strata, which)
    return _interval(reps) if reps is not None else (math.nan, math.nan)


def _contrast_ci(strata_a, strata_b, which_a: int, which_b: int, units=None) -> tuple[float, float]:
    """Bootstrap interval of stratified tau(b) minus stratified tau(a), on common units."""
    a = _restrict(strata_a, units)
    b = _restrict(strata_b, units)
    ra, rb = _boot_tau(a, which_a), _boot_tau(b, which_b)
    if ra is None and rb is None:
        return math.nan, math.nan
    n_boot = len(ra if ra is not None else rb)
    ra = ra if ra is not None else np.full(n_boot, _point_tau(a, which_a))
    rb = rb if rb is not None else np.full(n_boot, _point_tau(b, which_b))
    return _interval(rb - ra)


def _point_tau(strata, which):
    s = d = 0.0
    for st in strata:
        if len(st.units) >= 3:
            s1, d1 = _s_and_d(st.point[:, which], st.point[:, 1])
            s, d = s + s1, d + d1
    return float(_ratio(s, d))


def _restrict(strata: list[_Stratum], units: dict | None) -> list[_Stratum]:
    """The strata keeping only ``units[key]`` (the units common to both arms), in that order."""
    if units is None:
        return strata
    out = []
    for st in strata:
        keep = units.get(st.key, [])
        idx = [st.units.index(u) for u in keep]
        out.append(_Stratum(key=st.key, units=list(keep), rows=[st.rows[i] for i in idx],
                            draws=[st.draws[i] for i in idx], seeds=st.seeds,
                            point=st.point[idx], boot=None if st.boot is None else st.boot[:, idx]))
    return out


def _trend(rows, claim, model_keys, strata: list[_Stratum], statistic: str) -> None:
    """Slope of the per-density tau against log10(density), with a seed-bootstrap interval."""
    dataset, arch, skip = model_keys
    used = [st for st in strata if len(st.units) >= 3]
    dens = np.array([float(st.key) for st in used])
    taus = np.array([kendall_tau(st.point[:, 0], st.point[:, 1]) for st in used])
    test = slope_test(dens, taus)
    ci = (math.nan, math.nan)
    if used and any(st.boot is not None for st in used) and not math.isnan(test.value):
        per = np.stack([_boot_tau([st], 0) if st.boot is not None else
                        np.full(len(next(s.boot for s in used if s.boot is not None)),
                                kendall_tau(st.point[:, 0], st.point[:, 1])) for st in used], 1)
        ok = ~np.isnan(taus)
        ci = _interval(_slopes(np.log10(dens[ok]), per[:, ok]))
    rows.append(_row(claim, dataset, arch, skip, "all",
                     f"trend: slope of {statistic} per decade of density (negative: stronger at low density)",
                     test.value, test.n, **_test_fields(test, ci),
                     seeds=max((st.seeds for st in strata), default=0)))


def control_metrics(controls: pd.DataFrame) -> pd.DataFrame:
    """One row per (mask, draw) of a controls table (:func:`lib.controls.controls_table`): its
    keys, ``draw`` and the model-level metrics of :func:`lib.workbook.mask_summaries`."""
    from .workbook import mask_summaries

    return mask_summaries(controls, by=[k for k in KEYS if k in controls] + ["draw"])


def _control_draws(model: pd.DataFrame, summary: pd.DataFrame | None, metric: str) -> dict | None:
    """{row index of ``model``: array of the control draws' ``metric``} (rows without controls
    are left out)."""
    if summary is None:
        return None
    join = [k for k in ("arch", "skip", "dataset", "method", "density", "seed") if k in summary]
    groups = {tuple(k): g[metric].to_numpy(float) for k, g in summary.groupby(join, sort=False)}
    out = {}
    for i, key in zip(model.index, model[join].itertuples(index=False, name=None)):
        if tuple(key) in groups:
            out[i] = groups[tuple(key)]
    return out


def _paired(model, summary, metric, n_boot, seed, mk) -> list[_Stratum] | None:
    """Strata of (metric, accuracy, control's metric) on the masks that have controls."""
    draws = _control_draws(model, summary, metric)
    if not draws:
        return None
    return _strata(model, metric, ACC, "density", "method", n_boot, seed, (*mk, "controls"), draws)


def claims_table(results: pd.DataFrame, layers: pd.DataFrame | None = None,
                 controls: pd.DataFrame | None = None, n_boot: int = N_BOOT, n_perm: int = N_PERM,
                 seed: int = 0) -> pd.DataFrame:
    """All four claims as one tidy table (see the module docstring).

    ``controls``: the per-layer metrics of density-matched random masks
    (:func:`lib.controls.controls_table`); with them every tau(accuracy, metric) gets a row for
    the controls and one for real minus control. ``n_boot`` seed-bootstrap replicates,
    ``n_perm`` Monte Carlo permutations where exact enumeration is infeasible, ``seed`` for
    both. Columns: ``COLUMNS + EXTRA_COLUMNS``.
    """
    rows: list[dict] = []
    usable = results.copy()
    if "status" in usable:  # a diverged run has no accuracy to rank
        usable.loc[usable["status"] != "done", ACC] = np.nan
    usable["density"] = usable["density"].astype(float)
    # Sorted, so that resampling and permutations do not depend on the order rows came in.
    order = [k for k in ("dataset", "arch", "skip", "density", "method", "seed") if k in usable]
    usable = usable.sort_values(order, kind="stable").reset_index(drop=True)
    summary = control_metrics(controls) if controls is not None and len(controls) else None
    per_network: dict = {}
    for (dataset, arch, skip), model in usable.groupby(["dataset", "arch", "skip"], sort=True):
        mk = (dataset, arch, skip)
        seeds = int(model.groupby(["method", "density"]).size().max())
        test = kendall_test(model["density"], model["delta_r_norm"], n_perm,
                            _keyed_rng(seed, "perm", *mk, "rise"))
        rows.append(_row(C1_RISE, dataset, arch, skip, "all", "tau(density, delta_r_norm)", test.value, test.n,
                         **_test_fields(test), seeds=seeds,
                         n_undefined=int(model["delta_r_norm"].isna().sum()),
                         note="over all masks: methods differ, so also see the within-method row"))
        within = _strata(model, "density", "delta_r_norm", "method", "density", n_boot, seed, mk)
        _family(rows, C1_RISE, mk, within, "tau(density, delta_r_norm) within methods", n_perm, seed,
                per_stratum=False)
        for claim, metric, statistic in ((C1_RANK, "delta_r_norm", "tau(accuracy, delta_r_norm)"),
                                         (C2, "imdb_norm", "tau(accuracy, imdb_norm)")):
            strata = _strata(model, metric, ACC, "density", "method", n_boot, seed, mk)
            _family(rows, claim, mk, strata, statistic, n_perm, seed,
                    _paired(model, summary, metric, n_boot, seed, mk))
            if metric == "imdb_norm":
                _trend(rows, claim, mk, strata, statistic)
        _claim3(rows, model, layers, mk)
        if arch == "resnet34":
            test = kendall_test(model["narc"], model[ACC], n_perm, _keyed_rng(seed, "perm", *mk, "narc all"))
            rows.append(_row(C4, dataset, arch, skip, "all", "tau(narc, accuracy) over all masks", test.value,
                             test.n, **_test_fields(test), seeds=seeds,
                             note="pooled over densities: confounded by density, see the contrast"))
            strata = _strata(model, "narc", ACC, "density", "method", n_boot, seed, mk)
            _family(rows, C4, mk, strata, "tau(narc, accuracy) across methods", n_perm, seed,
                    _paired(model, summary, "narc", n_boot, seed, mk))
            per_network[(dataset, bool(skip))] = strata
    for dataset in sorted(usable["dataset"].unique()):
        _claim4_contrast(rows, dataset, per_network.get((dataset, True)), per_network.get((dataset, False)),
                         n_perm, seed)
    columns = COLUMNS + EXTRA_COLUMNS
    return pd.DataFrame(rows, columns=columns)


def _claim3(rows, model: pd.DataFrame, layers: pd.DataFrame | None, mk: tuple) -> None:
    dataset, arch, skip = mk
    random = model[model["method"].isin(["Rand", "ERK"])]
    defined = random["narc"].dropna()
    rows.append(_row(C3, dataset, arch, skip, "all", "share of Rand/ERK masks with mean narc <= 0",
                     float((defined <= 0).mean()) if len(defined) else math.nan, len(defined),
                     n_undefined=int(random["narc"].isna().sum()),
                     note="'always': any share below 1 refutes it"))
    if layers is not None and len(layers):
        lay = layers[(layers["dataset"] == dataset) & (layers["arch"] == arch) & (layers["skip"] == skip)
                     & layers["method"].isin(["Rand", "ERK"])]["narc"]
        ok = lay.dropna()
        rows.append(_row(C3, dataset, arch, skip, "all", "share of defined Rand/ERK layers with narc <= 0",
                         float((ok <= 0).mean()) if len(ok) else math.nan, len(ok),
                         n_undefined=int(lay.isna().sum()), note="'always': any share below 1 refutes it"))


CONTRAST = "contrast: tau(narc, accuracy) no skip minus skip"


def _claim4_contrast(rows, dataset, with_skip, without_skip, n_perm, seed) -> None:
    """Claim 4 as a contrast: per density and stratified, tau(narc, acc) without skips minus
    with skips, on the methods both networks have at that density."""
    if not with_skip or not without_skip:
        missing = "with" if not with_skip else "without"
        rows.append(_row(C4, dataset, "resnet34", None, "all", f"stratified {CONTRAST}", math.nan, 0,
                         note=f"no ResNet-34 {missing} skip connections in this source: the contrast "
                              "cannot be computed"))
        return
    a_by = {st.key: st for st in with_skip}
    b_by = {st.key: st for st in without_skip}
    common = {d: [u for u in a_by[d].units if u in b_by[d].units] for d in sorted(set(a_by) & set(b_by))}
    a = _restrict([a_by[d] for d in common], common)
    b = _restrict([b_by[d] for d in common], common)
    mk = (dataset, "resnet34", None)
    for sa, sb in zip(a, b):
        test = paired_contrast([sa.arm(0)], [sb.arm(0)], n_perm, _keyed_rng(seed, "swap", *mk, sa.key))
        ci = _contrast_ci([sa], [sb], 0, 0)
        rows.append(_row(C4, dataset, "resnet34", None, sa.key, CONTRAST, test.value, test.n,
                         **_test_fields(test, ci), seeds=max(sa.seeds, sb.seeds)))
    test = paired_contrast([s.arm(0) for s in a], [s.arm(0) for s in b], n_perm,
                           _keyed_rng(seed, "swap", *mk, "stratified"))
    ci = _contrast_ci(a, b, 0, 0)
    rows.append(_row(C4, dataset, "resnet34", None, "all", f"stratified {CONTRAST}", test.value, test.n,
                     **_test_fields(test, ci), seeds=max([s.seeds for s in a + b], default=0),
                     note="negative: NaRC relates more negatively to accuracy without skips (the claim)"))


# ------------------------------------------------------------------------------ summaries
def _model_name(arch, skip) -> str:
    if skip is None or (isinstance(skip, float) and math.isnan(skip)):
        return f"{arch} (no skip vs skip)"
    return f"{arch}{'' if skip else ' (no skip)'}"


def claims_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One line per (claim, statistic, dataset, model) pooled over densities: the stratified
    statistics (pairs compared within a density only) with their p-values and intervals, the
    trend, the contrasts, and the shares; ``strata``: how many densities (methods, for the
    within-method rise of delta_r) entered."""
    t = table[table["density"].astype(str) == "all"].copy()
    t["model"] = [_model_name(a, s) for a, s in zip(t["arch"], t["skip"])]
    cols = ["claim", "statistic", "dataset", "model", "value", "p_value", "ci_low", "ci_high", "n",
            "strata", "seeds", "n_undefined", "note"]
    out = t[cols].sort_values(["claim", "statistic", "dataset", "model"])
    return out.reset_index(drop=True)


# The headline test of each claim and how it is judged: "+" / "-" (a relation of that sign is
# claimed), "none" (the claim is that there is no relation), "control" (real minus control).
HEADLINE = [
    (C1_RISE, "stratified tau(density, delta_r_norm) within methods", "delta_r rises with density", "+"),
    (C1_RANK, "stratified tau(accuracy, delta_r_norm)", "delta_r does not rank methods", "none"),
    (C2, "stratified tau(accuracy, imdb_norm)", "imdb ranks methods", "+"),
    (C2, "trend: slope of tau(accuracy, imdb_norm) per decade of density (negative: stronger at low density)",
     "imdb strongest at low density", "-"),
    (C4, f"stratified {CONTRAST}", "narc relates to accuracy without skips, less with", "-"),
    (C1_RANK, f"stratified difference: tau(accuracy, delta_r_norm) minus {CONTROL}'",
     "delta_r beyond layer-wise density", "control"),
    (C2, f"stratified difference: tau(accuracy, imdb_norm) minus {CONTROL}'", "imdb beyond layer-wise density",
     "control"),
    (C4, f"stratified difference: tau(narc, accuracy) across methods minus {CONTROL}'",
     "narc beyond layer-wise density", "control"),
]


def verdicts(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """The verdict table: the headline test of each claim per dataset and model, with the
    Holm-adjusted p-value over all the tests listed (``tests`` says how many) and a verdict at
    ``alpha``. A claim of a relation is "supported" when the adjusted p is below ``alpha`` and
    the sign is the claimed one; "no relation" claims (delta_r does not rank methods) are judged
    on the *unadjusted* p, so the adjustment cannot manufacture support; claim 3 ("always") is
    refuted by any share below 1 and takes no test."""
    rows = []
    for claim, statistic, label, kind in HEADLINE:
        sel = table[(table["claim"] == claim) & (table["statistic"] == statistic)]
        for r in sel.itertuples(index=False):
            rows.append(dict(claim=label, dataset=r.dataset, model=_model_name(r.arch, r.skip),
                             statistic=statistic, value=r.value, ci_low=r.ci_low, ci_high=r.ci_high,
                             p_value=r.p_value, n=r.n, kind=kind, note=r.note))
    out = pd.DataFrame(rows, columns=["claim", "dataset", "model", "statistic", "value", "ci_low", "ci_high",
                                      "p_value", "n", "kind", "note"])
    out["p_holm"] = holm(out["p_value"]) if len(out) else []
    tests = int(out["p_value"].notna().sum())
    out["tests"] = tests
    out["verdict"] = [_verdict(r, alpha) for r in out.itertuples(index=False)]
    shares = table[table["claim"] == C3]
    for r in shares.itertuples(index=False):
        verdict = "untestable (undefined)" if math.isnan(r.value) else ("holds" if r.value >= 1 else "refuted")
        out.loc[len(out)] = dict(claim="narc <= 0 always for Rand and ERK", dataset=r.dataset,
                                 model=_model_name(r.arch, r.skip), statistic=r.statistic, value=r.value,
                                 ci_low=math.nan, ci_high=math.nan, p_value=math.nan, n=r.n, kind="always",
                                 note=r.note, p_holm=math.nan, tests=tests, verdict=verdict)
    return out.drop(columns="kind")


def _verdict(r, alpha: float) -> str:
    if math.isnan(r.p_value):
        return "untestable" + (f" ({r.note})" if r.note and math.isnan(r.value) else "")
    if r.kind == "none":
        return "contradicted (relation found)" if r.p_value < alpha else "consistent (no relation detected)"
    if r.kind == "control":
        return "differs from its control" if r.p_holm < alpha else "not distinguishable from layer-wise density"
    if r.p_holm < alpha:
        return "supported" if np.sign(r.value) == (1 if r.kind == "+" else -1) else "contradicted (opposite sign)"
    return "not supported (p >= alpha after Holm)"
