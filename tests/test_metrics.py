"""Hand-checkable tests of cellsynth.metrics on small inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import wasserstein_distance
from threadpoolctl import threadpool_limits

from cellsynth import metrics as M
from cellsynth.metrics import beyond, paper


@pytest.fixture(autouse=True)
def _one_thread():
    """Small problems: threads only add overhead, and oversubscribed cores slow OpenMP/BLAS badly."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def gaussian(rng, n, d=5, shift=0.0, scale=1.0):
    return rng.normal(shift, scale, size=(n, d))


# ---------------------------------------------------------------- ReferenceSpace


def test_reference_space_dense_sparse_and_clipping(rng):
    X = rng.poisson(2.0, size=(30, 12)).astype(float)
    space = M.ReferenceSpace(n_components=50, seed=3).fit(X)
    assert space.n_components_ == 12  # clipped to min(cells, genes)
    z = space.transform(X)
    assert z.shape == (30, 12)
    np.testing.assert_allclose(space.transform(sp.csr_matrix(X)), z)
    np.testing.assert_allclose(M.ReferenceSpace(50, seed=3).fit(sp.csr_matrix(X)).transform(X), z)
    # the training projection is centred; fewer cells than genes clips to the cell count
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-10)
    assert M.ReferenceSpace(50).fit(X[:7]).n_components_ == 7
    with pytest.raises(ValueError):
        space.transform(X[:, :5])


def test_reference_space_is_deterministic(rng):
    X = rng.normal(size=(300, 120))
    a = M.ReferenceSpace(50, seed=1).fit_transform(X)
    b = M.ReferenceSpace(50, seed=1).fit_transform(X)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- paper metrics


@pytest.mark.parametrize("c", [0.7, -2.5])
def test_wd_of_a_shift_is_the_shift(rng, c):
    x = rng.normal(size=200)
    assert wasserstein_distance(x, x + c) == pytest.approx(abs(c))
    assert M.wd(x, x + c) == pytest.approx(abs(c))  # a 1-D array is one feature
    X = rng.normal(size=(200, 4))
    assert M.wd(X, X + c) == pytest.approx(abs(c))
    # per-feature shifts average
    shifts = np.array([0.0, 1.0, 2.0, 5.0])
    assert M.wd(X, X + shifts) == pytest.approx(shifts.mean())
    assert M.wd(X, X) == 0.0


def test_cd_identical_and_known_values(rng):
    X = rng.normal(size=(100, 6))
    assert M.cd(X, X) == 0.0
    assert M.cd(X, X[::-1] * 3 + 1) == pytest.approx(0.0, abs=1e-12)  # invariant to affine maps
    # perfectly correlated pair vs independent pair: 2 off-diagonal entries of 4 differ by ~1
    u = rng.normal(size=(5000, 1))
    corr = np.hstack([u, u])
    indep = rng.normal(size=(5000, 2))
    assert M.cd(corr, indep) == pytest.approx(0.5, abs=0.02)
    # a constant feature correlates 0 with the others (no NaN)
    collapsed = np.tile(X.mean(axis=0), (10, 1))
    assert np.isfinite(M.cd(X, collapsed))


def test_mmd_biased_two_point_example_by_hand():
    a = np.array([[0.0], [1.0]])
    b = np.array([[0.0], [2.0]])
    # Kxx = (2 + 2e^-g)/4, Kyy = (2 + 2e^-4g)/4, Kxy = (1 + e^-4g + 2e^-g)/4  =>  (1 - e^-g)/2
    g = np.array(M.PAPER_GAMMAS)
    assert M.mmd_biased(a, b) == pytest.approx(np.mean((1 - np.exp(-g)) / 2))
    assert M.mmd_biased(a, b, gammas=[0.3]) == pytest.approx((1 - np.exp(-0.3)) / 2)
    # unbiased: e^-g + e^-4g - (1 + e^-4g + 2e^-g)/2 = (e^-4g - 1)/2
    assert M.mmd_unbiased(a, b) == pytest.approx(np.mean((np.exp(-4 * g) - 1) / 2))
    # one point each: 2 - 2e^-g|x-y|^2
    assert M.mmd_biased([[0.0]], [[1.0]], gammas=[1.0]) == pytest.approx(2 - 2 * np.exp(-1.0))


def test_mmd_identical_sets(rng):
    X = rng.normal(size=(80, 3))
    assert M.mmd_biased(X, X) == 0.0
    assert abs(M.mmd_unbiased(X, X)) < 0.02
    # two samples of one distribution: unbiased ≈ 0, far-apart ones clearly positive
    Y = rng.normal(size=(80, 3))
    assert abs(M.mmd_unbiased(X, Y)) < 0.02
    assert M.mmd_unbiased(X, Y + 3) > 0.2
    assert M.mmd_biased(X, Y + 3) > M.mmd_biased(X, Y)


def test_mmd_blockwise_equals_dense(rng, monkeypatch):
    X, Y = rng.normal(size=(57, 4)), rng.normal(0.3, 1.0, size=(41, 4))
    whole_b, whole_u = M.mmd_biased(X, Y), M.mmd_unbiased(X, Y)
    monkeypatch.setattr(paper, "_BLOCK_ENTRIES", 50)  # a handful of rows per block
    assert M.mmd_biased(X, Y) == pytest.approx(whole_b, rel=1e-12)
    assert M.mmd_unbiased(X, Y) == pytest.approx(whole_u, rel=1e-12)
    # against an explicit kernel
    from scipy.spatial.distance import cdist

    def k(p, q, gamma):
        return np.exp(-gamma * cdist(p, q, "sqeuclidean"))

    explicit = np.mean(
        [k(X, X, g).mean() + k(Y, Y, g).mean() - 2 * k(X, Y, g).mean() for g in M.PAPER_GAMMAS]
    )
    assert whole_b == pytest.approx(explicit, rel=1e-9)


def test_paper_metrics_keys(rng):
    X, Y = rng.normal(size=(20, 3)), rng.normal(size=(25, 3))
    out = M.paper_metrics(X, Y)
    assert set(out) == {"wd", "cd", "mmd"}
    assert out["mmd"] == M.mmd_biased(X, Y)


# ---------------------------------------------------------------- beyond the paper


def test_c2st_separable_and_indistinguishable(rng):
    a = gaussian(rng, 300)
    far = gaussian(rng, 200, shift=4.0)
    same = gaussian(rng, 300)
    assert M.c2st_auc(a, far, seed=0) > 0.97
    assert M.c2st_auc(a, same, seed=0) == pytest.approx(0.5, abs=0.1)
    assert M.c2st_auc(a, far, seed=0, classifier="logistic") > 0.97
    assert M.c2st_auc(a, same, seed=0, classifier="logistic") == pytest.approx(0.5, abs=0.1)
    assert M.c2st_auc(a, same, seed=1) == M.c2st_auc(a, same, seed=1)  # deterministic
    with pytest.raises(ValueError):
        M.c2st_auc(a, same, classifier="svm")


def test_knn_precision_recall(rng):
    real = gaussian(rng, 400, d=3)
    same = gaussian(rng, 400, d=3)
    pr = M.knn_precision_recall(real, same, k=5)
    assert pr.precision > 0.8 and pr.recall > 0.8
    collapsed = np.tile(real.mean(axis=0), (400, 1))
    pr_c = M.knn_precision_recall(real, collapsed, k=5)
    assert pr_c.recall < 0.05
    assert pr_c.precision == 1.0  # the mean lies on the real manifold
    # far away: neither fidelity nor coverage
    pr_far = M.knn_precision_recall(real, same + 10, k=5)
    assert pr_far.precision == 0.0 and pr_far.recall == 0.0


def test_knn_blockwise_equals_whole(rng, monkeypatch):
    real, synth = gaussian(rng, 120, d=4), gaussian(rng, 90, d=4, scale=1.5)
    whole = M.knn_precision_recall(real, synth, k=3)
    monkeypatch.setattr(beyond, "_BLOCK_ENTRIES", 100)
    assert M.knn_precision_recall(real, synth, k=3) == whole


def test_memorization(rng):
    train = gaussian(rng, 500, d=4)
    holdout = gaussian(rng, 200, d=4)
    copies = train[rng.choice(500, 200, replace=False)]
    mem_copy = M.memorization_score(copies, train, holdout)
    assert mem_copy.score == 0.0
    assert mem_copy.close_fraction == 1.0
    fresh = gaussian(rng, 200, d=4)
    mem_fresh = M.memorization_score(fresh, train, holdout)
    assert mem_fresh.score == pytest.approx(1.0, abs=0.2)
    assert mem_fresh.close_fraction < 0.15
    # slightly jittered copies are still flagged
    jitter = copies + rng.normal(0, 0.01, size=copies.shape)
    assert M.memorization_score(jitter, train, holdout).score < 0.1


def test_split_halves_stratified_seeded_disjoint():
    labels = np.array(["a"] * 11 + ["b"] * 6 + ["c"] * 1 + ["d"] * 3 + ["e"] * 7)
    a, b = M.split_halves(labels, seed=0)
    assert len(np.intersect1d(a, b)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(len(labels)))
    for t in "abde":
        n_a, n_b = np.sum(labels[a] == t), np.sum(labels[b] == t)
        assert abs(n_a - n_b) <= 1
    assert np.sum(labels[a] == "c") == 1  # a singleton type goes to A
    assert abs((len(a) - 1) - len(b)) <= 1  # balanced apart from the singleton
    a2, b2 = M.split_halves(list(labels), seed=0)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    a3, _ = M.split_halves(labels, seed=1)
    assert not np.array_equal(a, a3)


def test_compare_and_directions(rng):
    real = gaussian(rng, 120, d=4)
    half_a, half_b = real[:60], real[60:]
    train = gaussian(rng, 200, d=4)
    out = M.compare(half_a, half_b, train=train, seed=0)
    expected = {
        "wd",
        "cd",
        "mmd",
        "mmd_unbiased",
        "c2st_auc",
        "precision",
        "recall",
        "memorization",
        "memorization_close_fraction",
    }
    assert set(out) == expected
    assert all(np.isfinite(v) for v in out.values())
    assert set(out) <= set(M.METRIC_DIRECTIONS)
    assert out == M.compare(half_a, half_b, train=train, seed=0)  # deterministic
    assert set(M.compare(half_a, half_b, c2st=False)) == expected - {
        "c2st_auc",
        "memorization",
        "memorization_close_fraction",
    }
    assert M.metric_direction("f1[B cells]") == "higher"
    assert M.metric_direction("wd") == "lower"


def test_compare_by_type(rng):
    ref = np.vstack([gaussian(rng, 30, d=3), gaussian(rng, 10, d=3, shift=5)])
    ref_labels = ["x"] * 30 + ["y"] * 10
    cand = np.vstack([gaussian(rng, 25, d=3), gaussian(rng, 30, d=3, shift=5)])
    cand_labels = ["x"] * 25 + ["y"] * 30
    frame = M.compare_by_type(ref, ref_labels, cand, cand_labels, min_cells=20, train=ref, seed=0)
    assert list(frame["cell_type"]) == ["x"]  # y has only 10 reference cells
    assert frame.loc[0, "n_reference"] == 30 and frame.loc[0, "n_candidate"] == 25
    assert "memorization" in frame.columns
    empty = M.compare_by_type(ref, ref_labels, cand, cand_labels, min_cells=40)
    assert empty.empty


# ---------------------------------------------------------------- classification utility


def test_classification_utility_separable(rng):
    centres = {"B": 0.0, "T": 6.0, "NK": -6.0}

    def make(n_per):
        X = np.vstack([rng.normal(c, 1.0, size=(n_per, 8)) for c in centres.values()])
        y = np.repeat(list(centres), n_per)
        return X, y

    X_tr, y_tr = make(30)
    X_te, y_te = make(15)
    out = M.classification_utility(X_tr, y_tr, X_te, y_te, seed=0, n_estimators=30)
    assert out["f1_macro"] == pytest.approx(1.0)
    assert out["f1_weighted"] == pytest.approx(1.0)
    assert {
        "f1[B]",
        "f1[T]",
        "f1[NK]",
        "precision_macro",
        "recall_macro",
        "precision_weighted",
        "recall_weighted",
        "accuracy",
    } <= set(out)
    X_ex, y_ex = make(5)
    with_extra = M.classification_utility(
        sp.csr_matrix(X_tr), y_tr, X_te, y_te, X_ex, y_ex, seed=0, n_estimators=30
    )
    assert with_extra["n_train_extra"] == 15 and with_extra["f1_macro"] == pytest.approx(1.0)
    assert out == M.classification_utility(X_tr, y_tr, X_te, y_te, seed=0, n_estimators=30)
    frame = M.utility_frame({"real": out, "real+gen": with_extra})
    assert list(frame.columns) == ["setting", "metric", "value"]


def test_upsample_counts_q3():
    labels = ["a"] * 100 + ["b"] * 40 + ["c"] * 10 + ["d"] * 5
    # counts [100, 40, 10, 5]; quantile 0.75 'nearest' -> 40
    assert M.upsample_counts(labels) == {"c": 30, "d": 35}


def test_mmd_cap_subsamples_only_the_mmd_of_large_sets():
    from cellsynth.metrics import cd, mmd_biased, paper_metrics, wd
    from cellsynth.metrics.paper import mmd_subsample

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 5)), rng.normal(0.2, 1.0, size=(120, 5))
    assert paper_metrics(a, b, mmd_max_cells=300) == paper_metrics(a, b)  # no set above the cap
    capped = paper_metrics(a, b, mmd_max_cells=100, seed=3)
    a_cut, b_cut = mmd_subsample(a, b, 100, 3)
    assert (len(a_cut), len(b_cut)) == (100, 100)
    assert capped["mmd"] == pytest.approx(mmd_biased(a_cut, b_cut))
    assert capped["mmd"] != pytest.approx(mmd_biased(a, b))
    assert (capped["wd"], capped["cd"]) == (wd(a, b), cd(a, b))  # every cell
    with pytest.raises(ValueError, match="mmd_max_cells"):
        paper_metrics(a, b, mmd_max_cells=1)


def test_paper_only_per_type_measure_equals_the_paper_columns_of_compare():
    from cellsynth.metrics import compare_by_type, paper_metrics

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(90, 4)), rng.normal(size=(80, 4))
    la, lb = np.repeat(["x", "y", "z"], 30), np.repeat(["x", "y"], 40)
    full = compare_by_type(a, la, b, lb, min_cells=20, c2st=False)
    paper = compare_by_type(a, la, b, lb, min_cells=20, measure=paper_metrics)
    assert list(paper.columns) == ["cell_type", "n_reference", "n_candidate", "wd", "cd", "mmd"]
    pd.testing.assert_frame_equal(paper, full[paper.columns])
