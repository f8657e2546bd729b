"""The blockwise kernel and k-NN computations equal their textbook (full-matrix) formulas, and
never build a block larger than their budget (so 50k cells do not need an n×n matrix)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from cellsynth.metrics import (
    PAPER_GAMMAS,
    ReferenceSpace,
    beyond,
    knn_precision_recall,
    memorization_score,
    mmd_biased,
    mmd_unbiased,
    paper,
    space,
)


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(61, 5))
    b = rng.normal(0.3, 1.2, size=(47, 5))
    b[:3] = a[:3]  # exact duplicates across sets (distance 0)
    a[10] = a[11]  # and within a set
    return a, b


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of a few rows, so every computation runs through many blocks (and a ragged last one)."""
    monkeypatch.setattr(paper, "_BLOCK_ENTRIES", 150)
    monkeypatch.setattr(beyond, "_BLOCK_ENTRIES", 150)


def _full_kernel_means(x, y, gamma, *, drop_diagonal=False):
    k = np.exp(-gamma * cdist(x, y, "sqeuclidean"))
    if drop_diagonal:
        n = len(x)
        return (k.sum() - np.trace(k)) / (n * (n - 1))
    return k.mean()


def _mmd_reference(a, b, unbiased):
    values = []
    for g in PAPER_GAMMAS:
        kxx = _full_kernel_means(a, a, g, drop_diagonal=unbiased)
        kyy = _full_kernel_means(b, b, g, drop_diagonal=unbiased)
        values.append(kxx + kyy - 2 * _full_kernel_means(a, b, g))
    return float(np.mean(values))


def _covered_reference(queries, reference, k):
    d_ref = cdist(reference, reference)
    np.fill_diagonal(d_ref, np.inf)
    radius = np.sort(d_ref, axis=1)[:, k - 1]
    return (cdist(queries, reference) <= radius[None, :]).any(axis=1)


@pytest.mark.parametrize("blocks", ["one block", "many blocks"])
def test_mmds_equal_the_full_kernel_formulas(sets, blocks, request):
    if blocks == "many blocks":
        request.getfixturevalue("tiny_blocks")
    a, b = sets
    assert mmd_biased(a, b) == pytest.approx(_mmd_reference(a, b, unbiased=False), rel=1e-10, abs=1e-12)
    assert mmd_unbiased(a, b) == pytest.approx(_mmd_reference(a, b, unbiased=True), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_equal_the_full_distance_formula(sets, tiny_blocks, k):
    a, b = sets
    pr = knn_precision_recall(a, b, k=k)
    assert pr.precision == pytest.approx(float(np.mean(_covered_reference(b, a, k))), abs=1e-12)
    assert pr.recall == pytest.approx(float(np.mean(_covered_reference(a, b, k))), abs=1e-12)
    assert min(pr) < 1  # a non-trivial case (some cell is not covered)


def test_memorization_equals_the_full_distance_formula(sets, tiny_blocks):
    a, b = sets
    rng = np.random.default_rng(1)
    train = rng.normal(size=(53, 5))
    train[:2] = b[:2]  # two synthetic cells copy a training cell
    mem = memorization_score(b, train, a)
    d_synth = cdist(b, train).min(axis=1)
    d_hold = cdist(a, train).min(axis=1)
    assert mem.median_synthetic == pytest.approx(np.median(d_synth), rel=1e-12)
    assert mem.median_holdout == pytest.approx(np.median(d_hold), rel=1e-12)
    assert mem.score == pytest.approx(np.median(d_synth) / np.median(d_hold), rel=1e-12)
    assert mem.close_fraction == pytest.approx(np.mean(d_synth < np.quantile(d_hold, 0.05)), abs=1e-12)


def test_no_block_exceeds_its_budget(monkeypatch):
    """With a budget of 2,000 entries, 300 × 300 cells are never compared in one 90,000-entry matrix."""
    budget = 2_000
    monkeypatch.setattr(paper, "_BLOCK_ENTRIES", budget)
    monkeypatch.setattr(beyond, "_BLOCK_ENTRIES", budget)
    largest = []
    real_maximum, real_exp = np.maximum, np.exp

    def spy_maximum(x, *args, **kwargs):  # every distance block is clamped at 0 once
        largest.append(np.size(x))
        return real_maximum(x, *args, **kwargs)

    def spy_exp(x, *args, **kwargs):
        largest.append(np.size(x))
        return real_exp(x, *args, **kwargs)

    monkeypatch.setattr(np, "maximum", spy_maximum)
    monkeypatch.setattr(np, "exp", spy_exp)
    rng = np.random.default_rng(2)
    a, b, train = rng.normal(size=(300, 4)), rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    mmd_unbiased(a, b)
    knn_precision_recall(a, b, k=3)
    memorization_score(b, train, a)
    assert len(largest) > 100 and max(largest) <= budget  # many blocks, none over budget


@pytest.mark.parametrize("sparse", [False, True])
def test_reference_space_chunked_projection_equals_one_block(sparse):
    rng = np.random.default_rng(3)
    X = rng.poisson(1.0, size=(230, 40)).astype(np.float32)
    X_in = sp.csr_matrix(X) if sparse else X
    before = X.copy()
    fitted = ReferenceSpace(n_components=10, seed=0).fit(X_in)
    whole = fitted.transform(X_in, chunk=10_000)
    chunked = fitted.transform(X_in, chunk=17)
    np.testing.assert_allclose(chunked, whole, rtol=1e-10, atol=1e-10)
    # the same numbers as the textbook scaler + PCA
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(X.astype(np.float64))
    reference = PCA(n_components=10, random_state=0).fit(Z).transform(Z)
    np.testing.assert_allclose(whole, reference, rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(X, before)  # the input is never written to


def test_reference_space_never_writes_to_a_float64_input():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 8))
    before = X.copy()
    ReferenceSpace(n_components=3).fit(X).transform(X, chunk=7)
    np.testing.assert_array_equal(X, before)
    assert space.TRANSFORM_CHUNK >= 1


def test_peak_memory_stays_at_the_block_budget(monkeypatch):
    """No per-block result keeps its block alive: peak allocation ≪ an n × n matrix (32 MB here)."""
    import tracemalloc

    monkeypatch.setattr(paper, "_BLOCK_ENTRIES", 20_000)
    monkeypatch.setattr(beyond, "_BLOCK_ENTRIES", 20_000)
    rng = np.random.default_rng(5)
    a, b, train = rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3))
    budget = 20_000 * 8
    for fn in (lambda: mmd_unbiased(a, b), lambda: knn_precision_recall(a, b, k=5),
               lambda: memorization_score(b, train, a)):
        tracemalloc.start()
        fn()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 12 * budget, f"peak {peak / 2**20:.1f} MiB vs n x n = {2000**2 * 8 / 2**20:.0f} MiB"
