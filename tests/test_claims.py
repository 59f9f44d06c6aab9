"""Claims statistics: exact permutation p-values (ties included), the stratified statistic that
never compares across densities, seeded bootstrap intervals, the claim-4 contrast, the trend
of claim 2, density-matched control rows, and the verdict table."""
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from lib import claims

METHODS = ["Rand", "ERK", "SNIP", "GraSP", "SynFlow"]
DENSITIES = [0.01, 0.05, 0.1, 0.2, 0.4]


def brute_force_p(x, y):
    """Two-sided permutation p of scipy's tau-b, by enumerating every permutation of y."""
    obs = kendalltau(x, y).statistic
    taus = [kendalltau(x, np.asarray(y)[list(p)]).statistic for p in itertools.permutations(range(len(y)))]
    return np.mean(np.abs(np.nan_to_num(taus)) >= abs(obs) - 1e-12)


# ------------------------------------------------------------------------------ exact p-values
def test_exact_p_values_for_five_points():
    x = [1, 2, 3, 4, 5]
    perfect = claims.kendall_test(x, [10, 20, 30, 40, 50])
    assert perfect.value == 1.0 and perfect.p == pytest.approx(2 / 120) and perfect.method == "exact"
    two_inversions = claims.kendall_test(x, [2, 1, 3, 5, 4])  # S = 10 - 2 * 2 = 6
    assert two_inversions.value == pytest.approx(0.6) and two_inversions.p == pytest.approx(28 / 120)
    assert claims.kendall_test(x, [5, 4, 3, 2, 1]).p == pytest.approx(2 / 120)


@pytest.mark.parametrize("x, y", [
    ([1, 1, 2, 3, 4], [0.1, 0.4, 0.2, 0.9, 0.8]),  # a tie in x
    ([1, 1, 2, 2, 3, 4], [5, 5, 1, 7, 7, 9]),  # ties in both
    ([0.3, 0.3, 0.3, 0.5, 0.7], [1, 2, 2, 3, 1]),
])
def test_exact_p_values_with_ties_match_enumeration(x, y):
    test = claims.kendall_test(x, y)
    assert test.value == pytest.approx(kendalltau(x, y).statistic)  # tau-b, as scipy
    assert test.p == pytest.approx(brute_force_p(x, y))


def test_exact_p_without_ties_beyond_enumeration_matches_scipy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=11), rng.normal(size=11)
    y = y + x  # some relation, so the p-value is not trivially large
    test = claims.kendall_test(x, y)
    assert test.method == "exact"
    assert test.p == pytest.approx(kendalltau(x, y, method="exact").pvalue)


def test_undefined_and_constant_give_nan():
    assert math.isnan(claims.kendall_test([1, 2], [1, 2]).value)
    assert math.isnan(claims.kendall_test([1, 2, 3], [4, 4, 4]).p)
    assert claims.kendall_test([1, 2, 3, np.nan], [1, 2, 3, 9]).n == 3


# ------------------------------------------------------------------------------ stratified
def test_stratified_null_is_the_convolution_of_the_strata():
    a = (np.array([1, 2, 3, 4]), np.array([2, 1, 4, 3]))
    b = (np.array([1, 1, 2, 3]), np.array([3, 1, 2, 2]))
    test = claims.stratified_tau([a, b])
    s_obs = sum(claims._s_and_d(x, y)[0] for x, y in (a, b))
    hits = total = 0
    for pa in itertools.permutations(range(4)):
        for pb in itertools.permutations(range(4)):
            s = claims._s_and_d(a[0], a[1][list(pa)])[0] + claims._s_and_d(b[0], b[1][list(pb)])[0]
            hits += abs(s) >= abs(s_obs)
            total += 1
    assert test.p == pytest.approx(hits / total) and test.strata == 2 and test.n == 8


def test_stratified_tau_never_compares_across_densities():
    # Accuracy and metric both rise with density (the confound), but within each density the
    # metric is unrelated to accuracy: exactly half the pairs concordant.
    pattern_acc = [0, 1, 2, 3]
    pattern_metric = [1, 3, 0, 2]  # 3 concordant, 3 discordant pairs: tau = 0
    assert kendalltau(pattern_acc, pattern_metric).statistic == pytest.approx(0)
    x, y, strata = [], [], []
    for d in DENSITIES:
        x += [d + 0.001 * a for a in pattern_acc]
        y += [10 * d + 0.01 * m for m in pattern_metric]
        strata.append((np.array(x[-4:]), np.array(y[-4:])))
    assert kendalltau(x, y).statistic > 0.7  # pooled: the confound alone
    test = claims.stratified_tau(strata)
    assert test.value == pytest.approx(0) and test.p == pytest.approx(1.0)


def test_p_values_are_calibrated_under_no_relation():
    rng = np.random.default_rng(11)
    ps = [claims.stratified_tau([(rng.normal(size=5), rng.normal(size=5)) for _ in range(5)]).p
          for _ in range(400)]
    # A valid test rejects at most alpha of the time; discreteness makes it a bit less.
    assert 0.01 < np.mean(np.array(ps) < 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)


def test_monte_carlo_fallback_is_seeded_and_close_to_exact():
    rng = np.random.default_rng(5)
    x = np.repeat([1.0, 2.0, 3.0], 4)  # 12 points with ties: no exact enumeration
    y = x + rng.normal(scale=1.5, size=12)
    a = claims.stratified_tau([(x, y)], n_perm=4000, rng=np.random.default_rng(1))
    b = claims.stratified_tau([(x, y)], n_perm=4000, rng=np.random.default_rng(1))
    assert a.method.startswith("monte carlo") and a.p == b.p
    assert a.p == pytest.approx(kendalltau(x, y).pvalue, abs=0.03)  # scipy: normal approximation


def test_holm():
    p = [0.01, 0.04, np.nan, 0.03, 0.5]
    assert claims.holm(p) == pytest.approx([0.04, 0.09, np.nan, 0.09, 0.5], nan_ok=True)


# ------------------------------------------------------------------------------ tables
def results_table(rng, relation: float, seeds=(1, 2, 3), skips=(True,), narc_relation=None, noise=0.02):
    """5 methods x 5 densities x seeds. Accuracy rises with density and differs by method;
    ``imdb_norm`` follows the method's accuracy with weight ``relation`` (0: none)."""
    rows = []
    quality = dict(zip(METHODS, rng.permutation(5) / 4))
    for skip in skips:
        for d in DENSITIES:
            for m in METHODS:
                for s in seeds:
                    acc = 0.5 + 0.3 * d + 0.1 * quality[m] + rng.normal(0, noise)
                    nr = (narc_relation or {}).get(skip, 0.0)
                    rows.append(dict(
                        dataset="synthetic", arch="resnet34", skip=skip, method=m, density=d, seed=s,
                        status="done", test_acc=acc,
                        imdb_norm=relation * quality[m] + rng.normal(0, 0.1) + d,
                        delta_r_norm=d + rng.normal(0, 0.05),
                        narc=nr * quality[m] + rng.normal(0, 0.05) - d,
                        undefined_layers=1, imdb_undefined_layers=2))
    return pd.DataFrame(rows)


def get(table, statistic, density="all", skip=True):
    sel = table[(table["statistic"] == statistic) & (table["density"].astype(str) == str(density))]
    if skip is not None:
        sel = sel[sel["skip"] == skip]
    return sel.iloc[0]


def test_planted_relation_gives_small_p_and_an_interval_excluding_zero():
    table = claims.claims_table(results_table(np.random.default_rng(0), relation=1.0), n_boot=500)
    row = get(table, "stratified tau(accuracy, imdb_norm)")
    assert row["value"] > 0.6 and row["p_value"] < 1e-4 and row["ci_low"] > 0
    assert row["n"] == 25 and row["strata"] == 5 and row["seeds"] == 3
    assert row["undefined_layers"] == 2 * 75 and row["n_undefined"] == 0
    per_density = table[table["statistic"] == "tau(accuracy, imdb_norm)"]
    assert len(per_density) == 5 and (per_density["p_method"] == "exact").all()
    assert (per_density["ci_low"] <= per_density["value"]).all()
    assert (per_density["value"] <= per_density["ci_high"]).all()


def test_no_relation_gives_a_p_value_that_is_not_small():
    table = claims.claims_table(results_table(np.random.default_rng(1), relation=0.0), n_boot=500)
    row = get(table, "stratified tau(accuracy, imdb_norm)")
    assert row["p_value"] > 0.1 and row["ci_low"] < 0 < row["ci_high"]


def test_bootstrap_is_seeded_reproducible_and_independent_of_row_order():
    results = results_table(np.random.default_rng(2), relation=0.5)
    a = claims.claims_table(results, n_boot=300)
    b = claims.claims_table(results, n_boot=300)
    pd.testing.assert_frame_equal(a, b)
    shuffled = claims.claims_table(results.sample(frac=1, random_state=4), n_boot=300)
    pd.testing.assert_frame_equal(a, shuffled)
    other = claims.claims_table(results, n_boot=300, seed=1)
    assert not np.allclose(a["ci_low"].dropna(), other["ci_low"].dropna())


def test_one_seed_gives_exact_p_but_no_interval():
    table = claims.claims_table(results_table(np.random.default_rng(0), relation=1.0, seeds=(1,)))
    row = get(table, "stratified tau(accuracy, imdb_norm)")
    assert row["p_value"] < 1e-3 and math.isnan(row["ci_low"]) and row["seeds"] == 1


def test_trend_of_tau_over_density():
    rows = []
    # 0, 2, 4, 6 and 10 inversions: tau 1, 0.6, 0.2, -0.2, -1 from the lowest density up
    orders = [[0, 1, 2, 3, 4], [1, 0, 2, 4, 3], [2, 1, 0, 4, 3], [3, 2, 1, 0, 4], [4, 3, 2, 1, 0]]
    for order, d in zip(orders, DENSITIES):
        for rank, m in zip(order, METHODS):
            rows.append(dict(dataset="s", arch="vgg16", skip=True, method=m, density=d, seed=1, status="done",
                             test_acc=0.1 * METHODS.index(m), imdb_norm=float(rank), delta_r_norm=d, narc=0.0))
    table = claims.claims_table(pd.DataFrame(rows))
    trend = table[table["statistic"].str.startswith("trend")].iloc[0]
    assert trend["value"] < 0 and trend["p_value"] < 0.05 and trend["p_method"] == "exact"


def test_claim4_is_a_contrast_within_densities():
    # NaRC relates to accuracy within each density without skips, not with skips; in both
    # networks NaRC and accuracy also move with density (the confound).
    table = claims.claims_table(results_table(np.random.default_rng(4), relation=0.0, skips=(True, False),
                                              narc_relation={False: -1.0}), n_boot=500, n_perm=1000)
    row = get(table, "stratified " + claims.CONTRAST, skip=None)
    assert row["value"] < -0.5 and row["p_value"] < 0.01 and row["ci_high"] < 0
    per_density = table[table["statistic"] == claims.CONTRAST]
    assert len(per_density) == 5 and (per_density["p_value"] >= 2 / 32 - 1e-12).all()  # 5 methods: 2**5 swaps
    # The pooled row sees the confound in the network with skips, where there is no relation
    pooled = get(table, "tau(narc, accuracy) over all masks", skip=True)
    within = get(table, "stratified tau(narc, accuracy) across methods", skip=True)
    assert pooled["value"] < -0.3 and abs(within["value"]) < 0.3


def test_claim4_contrast_is_nan_without_a_no_skip_network():
    table = claims.claims_table(results_table(np.random.default_rng(5), relation=1.0), n_boot=100)
    row = get(table, "stratified " + claims.CONTRAST, skip=None)
    assert math.isnan(row["value"]) and "without skip connections" in row["note"]
    verdicts = claims.verdicts(table)
    assert verdicts.loc[verdicts["claim"].str.startswith("narc relates"), "verdict"].str.startswith("untestable").all()


def control_layers(results: pd.DataFrame, metric_of, draws=4, rng=None):
    """A layers-shaped controls table: one layer per (mask, draw), every summarize() column."""
    rows = []
    for r in results.itertuples(index=False):
        for draw in range(draws):
            v = metric_of(r, draw)
            rows.append(dict(arch=r.arch, skip=r.skip, width=1.0, dataset=r.dataset, method=r.method,
                             density=r.density, seed=r.seed, layer="l", control=True, draw=draw,
                             mu0=1.0, mu_hat=1.0, delta_s=1.0, delta_r=v, delta_r_norm=v, imdb=v, imdb_norm=v,
                             delta_s_imdb=v, narc=v, edges=10.0, size_left=10.0, size_right=10.0))
    return pd.DataFrame(rows)


def test_density_matched_controls_rows():
    rng = np.random.default_rng(6)
    results = results_table(rng, relation=1.0)
    # Controls with no relation to the method: only density (and draw noise).
    controls = control_layers(results, lambda r, draw: r.density + rng.normal(0, 0.1))
    table = claims.claims_table(results, controls=controls, n_boot=300, n_perm=500)
    real = get(table, "stratified tau(accuracy, imdb_norm)")
    ctrl = get(table, f"stratified tau(accuracy, imdb_norm) of {claims.CONTROL}")
    diff = get(table, f"stratified difference: tau(accuracy, imdb_norm) minus {claims.CONTROL}'")
    assert diff["value"] == pytest.approx(real["value"] - ctrl["value"])
    assert diff["value"] > 0.4 and diff["p_value"] < 0.01 and diff["ci_low"] > 0
    assert len(table[table["statistic"] == f"tau(accuracy, imdb_norm) of {claims.CONTROL}"]) == 5
    # The real rows do not change when controls are given.
    plain = claims.claims_table(results, n_boot=300, n_perm=500)
    assert real["value"] == get(plain, "stratified tau(accuracy, imdb_norm)")["value"]
    assert real["ci_low"] == get(plain, "stratified tau(accuracy, imdb_norm)")["ci_low"]


def test_a_metric_equal_to_its_control_shows_no_difference():
    rng = np.random.default_rng(7)
    results = results_table(rng, relation=1.0)
    imdb = {(r.method, r.density, r.seed): r.imdb_norm for r in results.itertuples()}
    controls = control_layers(results, lambda r, draw: imdb[(r.method, r.density, r.seed)])
    table = claims.claims_table(results, controls=controls, n_boot=200, n_perm=500)
    diff = get(table, f"stratified difference: tau(accuracy, imdb_norm) minus {claims.CONTROL}'")
    assert diff["value"] == pytest.approx(0) and diff["p_value"] == pytest.approx(1.0)


def test_verdicts_count_tests_and_adjust():
    results = pd.concat([results_table(np.random.default_rng(8), relation=1.0, skips=(True, False),
                                       narc_relation={False: -1.0})])
    table = claims.claims_table(results, n_boot=200, n_perm=500)
    v = claims.verdicts(table)
    tested = v[v["p_value"].notna()]
    # 2 networks x (rise, rank, imdb, trend) + the contrast
    assert len(tested) == 9 and (v["tests"] == 9).all()
    assert (tested["p_holm"] >= tested["p_value"] - 1e-15).all()
    verdict = dict(zip(v["claim"] + "/" + v["model"], v["verdict"]))
    assert verdict["imdb ranks methods/resnet34"] == "supported"
    assert verdict["delta_r rises with density/resnet34"] == "supported"
    assert verdict["narc relates to accuracy without skips, less with/resnet34 (no skip vs skip)"] == "supported"
    assert verdict["delta_r does not rank methods/resnet34"] == "consistent (no relation detected)"


def test_claims_on_a_table_with_known_answers():
    rows = []
    for density in (0.1, 0.4):
        for rank, method in enumerate(["Rand", "ERK", "SNIP", "GraSP"]):
            rows.append(dict(dataset="d", arch="resnet34", skip=True, method=method, density=density, seed=1,
                             status="done", test_acc=0.5 + 0.1 * rank + density, imdb_norm=rank + density,
                             delta_r_norm=density - 0.01 * rank, narc=-0.1 if method in ("Rand", "ERK") else 0.2))
    table = claims.claims_table(pd.DataFrame(rows))
    def value(claim, statistic, density):
        sel = table[table["claim"].str.startswith(claim) & (table["statistic"] == statistic)
                    & (table["density"].astype(str) == str(density))]
        return sel["value"].item()
    assert value("2", "tau(accuracy, imdb_norm)", 0.1) == pytest.approx(1.0)  # imdb orders methods like accuracy
    assert value("1: delta_r ranks", "tau(accuracy, delta_r_norm)", 0.4) == pytest.approx(-1.0)
    assert value("1: delta_r rises", "tau(density, delta_r_norm)", "all") > 0.5
    assert value("3", "share of Rand/ERK masks with mean narc <= 0", "all") == 1.0
    assert value("2", "stratified tau(accuracy, imdb_norm)", "all") == pytest.approx(1.0)
    summary = claims.claims_summary(table)
    assert (summary["strata"].dropna() <= 4).all()
    stratified = summary[summary["statistic"].str.startswith("stratified tau(accuracy")]
    assert stratified["value"].notna().all() and stratified["p_value"].notna().all()
    # with 4 methods at 2 densities, a perfect ranking has p = 2 / 24**2
    assert summary.loc[summary["statistic"] == "stratified tau(accuracy, imdb_norm)", "p_value"].item() == \
        pytest.approx(2 / 24**2)


def test_tau_by_density_figure():
    from lib import plots

    rng = np.random.default_rng(9)
    results = results_table(rng, relation=1.0, skips=(True, False))
    controls = control_layers(results, lambda r, draw: r.density + rng.normal(0, 0.1), draws=2)
    table = claims.claims_table(results, controls=controls, n_boot=100, n_perm=200)
    fig = plots.tau_by_density(table, "imdb_norm")
    assert len(fig.axes) == 2  # one panel per model
    for ax in fig.axes:
        assert len(ax.lines) >= 2 and "stratified: real" in ax.get_title() and "control" in ax.get_title()
    plots.plt.close(fig)
    with pytest.raises(ValueError, match="choose one of"):
        plots.tau_by_density(table, "mu0")
