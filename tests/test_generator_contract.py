"""One contract every registered generator honours: fit -> sample -> save -> load -> same samples."""

from __future__ import annotations

import dataclasses
import json
import random
import typing

import numpy as np
import pytest
import torch

from cellsynth.data.preprocess import normalise
from cellsynth.generators import GENERATORS, Generator, GeneratorError, PerTypeGenerator

# Small, fast hyperparameters per generator (one epoch where a model has epochs).
# Every name in GENERATORS must have an entry: a new generator without one fails the suite.
TINY: dict[str, dict] = {
    "moe": {"n_blocks": 1, "n_tokens": 4, "d_model": 8, "n_heads": 2, "gate_hidden": 8, "coupling_hidden": 8,
            "maf_hidden": 16, "mask_hidden": 8, "epochs": 1, "batch_size": 32, "patience": None},
    "activa": {"latent_dim": 4, "hidden": (16,), "classifier_hidden": (8,), "epochs": 2, "warmup_epochs": 1,
               "batch_size": 32, "patience": None},
    "maf": {"n_layers": 2, "hidden_features": 16, "epochs": 1, "batch_size": 32, "patience": None},
    "ctgan": {"epochs": 1, "batch_size": 20, "embedding_dim": 8, "generator_dim": (16,), "discriminator_dim": (16,)},
    "tvae": {"epochs": 10, "batch_size": 40, "embedding_dim": 8, "compress_dims": (32,), "decompress_dims": (32,)},
    "gaussian_copula": {"default_distribution": "norm"},
    "train_copy": {},
    "gene_shuffle": {},
    "class_gaussian_pca": {"n_components": 10},
    "smote": {"k_neighbors": 3},
    "flow_matching": {"hidden_features": 16, "hidden_layers": 1, "epochs": 1, "batch_size": 32,
                      "integration_steps": 4, "patience": None},
    "scvi": {"n_latent": 3, "n_hidden": 16, "epochs": 2, "batch_size": 32, "patience": None},
    "nb_latent_flow": {"n_latent": 3, "n_hidden": 16, "epochs": 2, "batch_size": 32, "patience": None,
                       "prior_params": {"hidden_features": 16, "epochs": 1, "integration_steps": 4, "patience": None}},
    "nb_latent_maf": {"n_latent": 3, "n_hidden": 16, "epochs": 2, "batch_size": 32, "patience": None,
                      "prior_params": {"hidden_features": 16, "epochs": 1, "patience": None}},
    "nb_latent_moe": {"n_latent": 4, "n_hidden": 16, "epochs": 2, "batch_size": 32, "patience": None,
                      "prior_params": {"n_blocks": 1, "n_tokens": 2, "d_model": 8, "n_heads": 2, "gate_hidden": 8,
                                       "coupling_hidden": 8, "maf_hidden": 16, "mask_hidden": 8, "epochs": 1,
                                       "patience": None}},
}


@pytest.fixture(scope="module")
def adata(counts_factory):
    """Log-normalised cells as the preprocessing writes them: ``X`` dense, the raw counts in
    ``layers["counts"]``, library sizes in ``obs["total_counts"]`` (the count generators read them)."""
    cells = normalise(counts_factory(n_cells=120, n_genes=24, n_types=3, seed=1), target_sum=1e4)
    cells.X = cells.X.toarray()
    cells.obs["total_counts"] = np.asarray(cells.layers["counts"].sum(axis=1)).ravel()
    return cells


def test_every_generator_has_a_tiny_preset():
    assert set(GENERATORS) <= set(TINY), f"add TINY entries for {sorted(set(GENERATORS) - set(TINY))}"


def tiny(name: str) -> Generator:
    if name == "per_type":
        return PerTypeGenerator("maf", label_key="cell_type", **TINY["maf"])
    return GENERATORS[name](label_key="cell_type", **TINY[name])


def _global_rng_states() -> tuple:
    numpy_state = np.random.get_state()  # noqa: NPY002
    return torch.get_rng_state(), numpy_state[1].copy(), numpy_state[2:], random.getstate()


def _assert_same_states(before: tuple, after: tuple, when: str) -> None:
    assert torch.equal(before[0], after[0]), f"{when} changed torch's global RNG"
    assert np.array_equal(before[1], after[1]) and before[2] == after[2], f"{when} changed numpy's global RNG"
    assert before[3] == after[3], f"{when} changed python's random"


@pytest.mark.parametrize("name", [*sorted(GENERATORS), "per_type"])
def test_fit_and_sample_leave_the_global_rng_untouched(name, adata):
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    before = _global_rng_states()
    model = tiny(name)
    model.fit(adata, seed=3, progress=False)
    _assert_same_states(before, _global_rng_states(), "fit")
    model.sample(12, cell_types={"type_0": 5, "type_2": 7}, seed=11)
    model.sample(20, seed=5)
    _assert_same_states(before, _global_rng_states(), "sample")


def test_every_generator_is_registered_under_its_name(tmp_path):
    for name, cls in GENERATORS.items():
        assert cls.name == name and Generator.registry[name] is cls
    assert Generator.registry["per_type"] is PerTypeGenerator
    (tmp_path / "generator.json").write_text(json.dumps({"name": "no_such_model"}))
    with pytest.raises(GeneratorError, match="unknown generator 'no_such_model'"):
        Generator.load(tmp_path)


def _literal_fields(name: str) -> list[str]:
    hints = typing.get_type_hints(GENERATORS[name].Params)
    return [f.name for f in dataclasses.fields(GENERATORS[name].Params) if typing.get_origin(hints[f.name]) is typing.Literal]


@pytest.mark.parametrize("name", [name for name in sorted(GENERATORS) if _literal_fields(name)])
def test_a_value_outside_a_literal_field_names_generator_field_and_choices(name):
    field = _literal_fields(name)[0]
    choices = typing.get_args(typing.get_type_hints(GENERATORS[name].Params)[field])
    with pytest.raises(ValueError, match=rf"^{name}: {field} must be one of .*{choices[0]}.*, got 'bogus'$"):
        GENERATORS[name](**{field: "bogus"})


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_fit_sample_save_load(name, adata, tmp_path):
    cls = GENERATORS[name]
    model = tiny(name)
    before = adata.X.copy()
    history = model.fit(adata, seed=3, progress=False)
    np.testing.assert_array_equal(adata.X, before)  # input untouched
    assert history.fit_seconds >= 0

    request = {"type_0": 5, "type_2": 7}
    synth = model.sample(12, cell_types=request, seed=11)
    assert synth.shape == (12, adata.n_vars)
    assert list(synth.var_names) == list(adata.var_names)
    assert np.isfinite(synth.X).all()
    assert (synth.X >= 0).all()
    assert synth.obs["synthetic"].all()
    assert (synth.obs["generator"] == name).all()
    assert set(synth.obs["cell_type"].astype(str)) <= set(adata.obs["cell_type"].astype(str))
    if model.conditional:
        assert synth.obs["cell_type"].value_counts().to_dict() == {"type_0": 5, "type_2": 7, "type_1": 0}

    if model.models_counts:
        counts = synth.layers["counts"].toarray()
        assert counts.dtype == np.int32 and (counts >= 0).all()
        np.testing.assert_array_equal(synth.X > 0, counts > 0)  # X is the counts, log-normalised
        # normalised to the whole library (all genes), of which these genes hold at most 1e4
        assert (np.expm1(synth.X.astype(np.float64)).sum(axis=1) <= 1e4 * (1 + 1e-4)).all()

    unconditional = model.sample(20, seed=5)
    assert unconditional.n_obs == 20

    model.save(tmp_path / name)
    restored = Generator.load(tmp_path / name)
    assert type(restored) is cls
    again = restored.sample(12, cell_types=request, seed=11)
    np.testing.assert_allclose(again.X, synth.X, rtol=1e-5, atol=1e-5)
    if model.models_counts:
        assert (again.layers["counts"] != synth.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(again.obs["cell_type"].astype(str), synth.obs["cell_type"].astype(str))


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_unknown_cell_type_and_bad_hyperparameter_are_clear_errors(name, adata):
    cls = GENERATORS[name]
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        cls(not_a_parameter=1)
    model = cls(label_key="cell_type", **TINY[name])
    model.fit(adata, seed=0, progress=False)
    with pytest.raises(GeneratorError, match="not in the training data"):
        model.sample(2, cell_types=["type_0", "nonexistent"], seed=0)


@pytest.mark.parametrize("name", ["maf", "moe", "smote", "train_copy", "class_gaussian_pca"])
def test_sparse_input_gives_the_cells_of_the_dense_input(name, adata):
    """Fits transform their one dense copy of X in place: a CSR input must be densified into that
    copy, never mutated, and lead to the same model."""
    import scipy.sparse as sp

    sparse = adata.copy()
    sparse.X = sp.csr_matrix(adata.X)
    before = sparse.X.copy()
    cells = {}
    for kind, data in (("dense", adata), ("sparse", sparse)):
        model = GENERATORS[name](label_key="cell_type", **TINY[name])
        model.fit(data, seed=3, progress=False)
        cells[kind] = model.sample(10, cell_types={"type_1": 10}, seed=2).X
    assert (before != sparse.X).nnz == 0
    np.testing.assert_allclose(cells["sparse"], cells["dense"], rtol=1e-5, atol=1e-5)


def test_non_finite_expression_is_a_clear_error(adata):
    bad = adata.copy()
    bad.X[1500 // adata.n_vars, 3] = np.nan  # one value, beyond the first row block's first row
    with pytest.raises(GeneratorError, match="NaN or infinite"):
        GENERATORS["smote"](label_key="cell_type").fit(bad, seed=0, progress=False)
