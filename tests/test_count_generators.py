"""The count-space generators (``scvi``, ``nb_latent_*``) on real PBMC3K counts, and their parts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from cellsynth.data import assign_folds, make_fold, normalise, quality_control, validate_counts
from cellsynth.data.validation import drop_unusable_cells
from cellsynth.generators import GENERATORS, GeneratorError
from cellsynth.generators.count_space import LibrarySizes, to_fold_space
from cellsynth.generators.latent_flow import LATENT_PRIOR_DEFAULTS, NBLatentFlowGenerator
from conftest import RAW_DATA

AUTOENCODER = {"n_latent": 4, "n_hidden": 32, "epochs": 3, "batch_size": 64, "patience": None}
TINY_PRIORS = {
    "flow_matching": {"hidden_features": 16, "epochs": 1, "integration_steps": 4, "patience": None},
    "maf": {"hidden_features": 16, "epochs": 1, "patience": None},
    "moe": {"n_blocks": 1, "n_tokens": 2, "d_model": 8, "n_heads": 2, "gate_hidden": 8, "coupling_hidden": 8,
            "maf_hidden": 16, "mask_hidden": 8, "epochs": 1, "patience": None},
}


@pytest.fixture(scope="module")
def pbmc_fold() -> ad.AnnData:
    """Training cells of a PBMC3K fold as the pipeline makes them: 900 cells, 300 HVGs."""
    raw = ad.read_h5ad(RAW_DATA / "pbmc3k_counts.h5ad")
    raw = raw[np.random.default_rng(0).choice(raw.n_obs, 900, replace=False)].copy()
    cells, _ = validate_counts(raw, source="pbmc3k", label_key="seurat_annotations")
    cells, _ = quality_control(cells, source="pbmc3k")
    cells = normalise(drop_unusable_cells(cells, 10, source="pbmc3k", n_folds=3)[0])
    train, _ = make_fold(cells, assign_folds(cells, n_folds=3, seed=0), fold=0, n_top_genes=300)
    return train


def test_scvi_counts_are_integers_in_the_training_library_range_for_every_requested_type(pbmc_fold):
    model = GENERATORS["scvi"](**AUTOENCODER)
    model.fit(pbmc_fold, seed=0, progress=False)
    request = {cell_type: 40 for cell_type in model.cell_types_}
    cells = model.sample(sum(request.values()), cell_types=request, seed=1)

    counts = cells.layers["counts"].toarray()
    assert counts.dtype == np.int32 and (counts >= 0).all()
    assert cells.obs["cell_type"].value_counts().to_dict() == request
    library = counts.sum(axis=1)
    real = np.asarray(pbmc_fold.layers["counts"].sum(axis=1)).ravel()
    # NB draws around a log-normal library: the bulk inside the real range, medians alike
    inside = (library >= real.min() / 2) & (library <= real.max() * 2)
    assert inside.mean() > 0.95
    assert 0.5 < np.median(library) / np.median(real) < 2.0
    # X is those counts normalised with the fold's target sum, as the preprocessing does
    assert cells.n_vars == pbmc_fold.n_vars and list(cells.var_names) == list(pbmc_fold.var_names)
    np.testing.assert_array_equal(cells.X > 0, counts > 0)


@pytest.mark.parametrize("prior", sorted(TINY_PRIORS))
def test_each_latent_prior_trains_and_samples_new_latents(prior, pbmc_fold, tmp_path):
    model = NBLatentFlowGenerator(latent_prior=prior, prior_params=TINY_PRIORS[prior], **AUTOENCODER)
    history = model.fit(pbmc_fold, seed=0, progress=False)
    assert len(history.train_loss) == AUTOENCODER["epochs"] and len(history.extra["prior_train_loss"]) == 1
    cells = model.sample(30, cell_types={model.cell_types_[0]: 30}, seed=2)
    assert (cells.obs["cell_type"] == model.cell_types_[0]).all()
    assert cells.layers["counts"].sum() > 0

    model.save(tmp_path / prior)
    again = type(model).load(tmp_path / prior).sample(30, cell_types={model.cell_types_[0]: 30}, seed=2)
    assert (again.layers["counts"] != cells.layers["counts"]).nnz == 0


def test_a_bad_prior_hyperparameter_fails_before_training():
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        NBLatentFlowGenerator(latent_prior="maf", prior_params={"not_a_field": 1})
    assert set(LATENT_PRIOR_DEFAULTS) == {"flow_matching", "maf", "moe"}


def test_count_generators_need_raw_counts(pbmc_fold):
    no_counts = pbmc_fold.copy()
    del no_counts.layers["counts"]
    with pytest.raises(GeneratorError, match=r"needs layers\['counts'\]"):
        GENERATORS["scvi"](**AUTOENCODER).fit(no_counts, seed=0, progress=False)
    not_counts = pbmc_fold.copy()
    not_counts.layers["counts"] = not_counts.X.copy()
    with pytest.raises(GeneratorError, match="non-negative integer counts"):
        GENERATORS["scvi"](**AUTOENCODER).fit(not_counts, seed=0, progress=False)

    corrected = pbmc_fold.copy()
    corrected.uns["batch_correction"] = {"method": "linear"}
    with pytest.raises(GeneratorError, match=r"X is batch-corrected \(linear\)"):
        GENERATORS["nb_latent_flow"](**AUTOENCODER).fit(corrected, seed=0, progress=False)


def test_library_sizes_follow_each_type_and_keep_totals_above_the_hvg_counts():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [200, 200, 3])  # a rare type borrows the pooled spread
    hvg = np.exp(rng.normal([5.0, 7.0, 6.0], 0.3, size=(403, 3))[np.arange(403), labels])
    total = hvg * np.exp(rng.normal(1.0, 0.1, size=403))
    model = LibrarySizes.fit(hvg, total, labels, n_types=3)
    drawn, ratio = model.sample(np.repeat([0, 1, 2], 2000), np.random.default_rng(1))
    for t, centre in enumerate([5.0, 7.0, 6.0]):
        assert abs(np.log(drawn[t * 2000 : (t + 1) * 2000]).mean() - centre) < 0.35
    assert (ratio >= 1).all()
    np.testing.assert_allclose(np.log(drawn[:2000]).std(), 0.3, atol=0.05)


def test_to_fold_space_is_the_preprocessing_normalisation(counts_factory):
    raw = counts_factory(n_cells=20, n_genes=12, n_types=2, seed=0)
    expected = normalise(raw, target_sum=1e4).X.toarray()
    counts = raw.X.toarray()
    np.testing.assert_allclose(to_fold_space(counts, counts.sum(axis=1), 1e4), expected, rtol=1e-5)


def test_one_count_model_per_type_is_refused_with_the_fix():
    from cellsynth.generators import PerTypeGenerator

    with pytest.raises(ValueError, match="models raw counts.*strategy: conditional"):
        PerTypeGenerator("nb_latent_flow")
