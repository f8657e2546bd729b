"""Cell counts (the paper's Q3 rule, matched counts) and the per-type wrapper."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cellsynth.generators import (
    GENERATORS,
    Generator,
    GeneratorError,
    PerTypeGenerator,
    TrainingHistory,
    matched_counts,
    q3_upsample_counts,
)


# ---------------------------------------------------------------------------------------- Q3 rule
def test_q3_rule_on_hand_made_counts():
    counts = {"a": 10, "b": 20, "c": 30, "d": 40, "e": 100}
    # np.quantile([10, 20, 30, 40, 100], 0.75, method="nearest") == 40
    assert q3_upsample_counts(counts) == {"a": 30, "b": 20, "c": 10}


def test_q3_rule_uses_nearest_not_interpolation():
    counts = {"w": 5, "x": 8, "y": 13, "z": 50}
    # position 0.75 * 3 = 2.25 -> nearest index 2 -> 13 (linear interpolation would give 22.25)
    assert np.quantile(list(counts.values()), 0.75, method="nearest") == 13
    assert q3_upsample_counts(counts) == {"w": 8, "x": 5}


def test_q3_rule_keeps_input_order_and_omits_types_at_or_above_q3():
    counts = {"big": 300, "tiny": 3, "mid": 100, "q3": 200, "small": 30}
    result = q3_upsample_counts(counts)
    assert list(result) == ["tiny", "mid", "small"]
    assert result == {"tiny": 197, "mid": 100, "small": 170}
    assert q3_upsample_counts({"a": 7, "b": 7, "c": 7}) == {}


@pytest.mark.parametrize("bad", [{}, {"a": -1, "b": 3}, {"a": 1.5}])
def test_q3_rule_rejects_bad_counts(bad):
    with pytest.raises(ValueError):
        q3_upsample_counts(bad)


# --------------------------------------------------------------------------------- matched counts
@pytest.mark.parametrize("n_cells", [0, 1, 7, 100, 527, 2638])
def test_matched_counts_sum_to_n_and_follow_proportions(n_cells):
    counts = {"a": 697, "b": 483, "c": 480, "d": 344, "e": 271, "f": 162, "g": 155, "h": 32, "i": 14}
    result = matched_counts(counts, n_cells, seed=0)
    assert list(result) == list(counts)
    assert sum(result.values()) == n_cells
    total = sum(counts.values())
    for cell_type, count in counts.items():
        quota = n_cells * count / total
        assert np.floor(quota) <= result[cell_type] <= np.ceil(quota)


def test_matched_counts_largest_remainder_and_seeded_ties():
    # quotas 10 * (0.45, 0.35, 0.2) = 4.5, 3.5, 2.0 -> floors 4, 3, 2; one cell left, tie 0.5/0.5
    outcomes = {tuple(matched_counts({"a": 45, "b": 35, "c": 20}, 10, seed=s).values()) for s in range(20)}
    assert outcomes == {(5, 3, 2), (4, 4, 2)}
    # Deterministic for a seed.
    assert matched_counts({"a": 1, "b": 1, "c": 1}, 2, seed=3) == matched_counts({"a": 1, "b": 1, "c": 1}, 2, seed=3)
    # Clear largest remainder wins regardless of the seed: quotas 1.4, 1.6 -> (1, 2).
    for seed in range(5):
        assert matched_counts({"a": 7, "b": 8}, 3, seed=seed) == {"a": 1, "b": 2}
    # Proportional request equal to the training counts returns them.
    assert matched_counts({"a": 3, "b": 0, "c": 5}, 8) == {"a": 3, "b": 0, "c": 5}


def test_matched_counts_rejects_bad_input():
    with pytest.raises(ValueError):
        matched_counts({"a": 0, "b": 0}, 5)
    with pytest.raises(ValueError):
        matched_counts({"a": 3}, -1)


# ----------------------------------------------------------------------------------- per-type model
@dataclasses.dataclass(frozen=True)
class _RecorderParams:
    epochs: int = 2


class _Recorder(Generator):
    """Fake generator: remembers its fit seed and training rows, reports per-epoch losses.

    Defining it registers it (``Generator.__init_subclass__``), so ``per_type`` can wrap it.
    """

    name = "_recorder"
    Params = _RecorderParams

    def _fit(self, X, labels, *, seed, progress, on_epoch):
        self.seed_ = seed
        self.rows_ = X.copy()
        history = TrainingHistory()
        for epoch in range(self.params.epochs):
            history.train_loss.append(float(seed % 1000 + epoch))
            if on_epoch is not None:
                on_epoch(epoch, {"train_loss": history.train_loss[-1]})
        return history

    def _sample(self, labels, *, seed):
        rng = np.random.default_rng(seed)
        return self.rows_[rng.integers(0, len(self.rows_), size=len(labels))]

    def _save_state(self, directory: Path) -> None:
        np.savez(directory / "rec.npz", rows=self.rows_, seed=self.seed_)

    def _load_state(self, directory: Path) -> None:
        with np.load(directory / "rec.npz") as state:
            self.rows_, self.seed_ = state["rows"], int(state["seed"])


@pytest.fixture(scope="module")
def recorder():
    assert Generator.registry["_recorder"] is _Recorder
    yield _Recorder
    Generator.registry.pop("_recorder")  # not a generator of the rest of the session


@pytest.fixture(scope="module")
def adata(tiny_adata_factory):
    data = tiny_adata_factory(n_cells=90, n_genes=12, n_types=3, seed=4)
    return data


def test_per_type_fits_one_model_per_type_with_derived_seeds(adata, recorder):
    epochs_seen = []
    model = PerTypeGenerator(generator="_recorder", params={"epochs": 3})
    history = model.fit(adata, seed=7, progress=False, on_epoch=lambda e, m: epochs_seen.append((e, m)))
    assert sorted(model.models_) == ["type_0", "type_1", "type_2"]
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    for cell_type, sub in model.models_.items():
        assert isinstance(sub, _Recorder)
        np.testing.assert_array_equal(sub.rows_, adata.X[labels == cell_type])
        assert len(history.extra[f"{cell_type}/train_loss"]) == 3
    seeds = [sub.seed_ for sub in model.models_.values()]
    assert len(set(seeds)) == 3 and 7 not in seeds
    # Same fit seed -> same sub-model seeds; another fit seed -> others.
    again = PerTypeGenerator(generator="_recorder").fit(adata, seed=7, progress=False)
    other = PerTypeGenerator(generator="_recorder")
    other.fit(adata, seed=8, progress=False)
    assert [s.seed_ for s in other.models_.values()] != seeds
    assert again.fit_seconds >= 0
    assert len(epochs_seen) == 9
    assert {key for _, metrics in epochs_seen for key in metrics} == {f"type_{i}/train_loss" for i in range(3)}


def test_per_type_sample_counts_order_and_round_trip(adata, tmp_path):
    model = PerTypeGenerator(generator="train_copy")
    model.fit(adata, seed=0, progress=False)
    request = ["type_2", "type_0", "type_2", "type_1", "type_2"]
    synth = model.sample(5, cell_types=request, seed=4)
    assert list(synth.obs["cell_type"].astype(str)) == request
    assert (synth.obs["generator"] == "per_type").all()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    for row, cell_type in zip(synth.X, request, strict=True):
        # every cell is a copy of a training cell of its own type
        assert (np.abs(adata.X[labels == cell_type] - row).max(axis=1) == 0).any()

    counts = {"type_0": 4, "type_1": 0, "type_2": 11}
    synth = model.sample(15, cell_types=counts, seed=2)
    assert synth.obs["cell_type"].value_counts().to_dict() == counts

    model.save(tmp_path / "pt")
    assert (tmp_path / "pt" / "types" / "000" / "generator.json").exists()
    restored = Generator.load(tmp_path / "pt")
    assert type(restored) is PerTypeGenerator
    assert sorted(restored.models_) == sorted(model.models_)
    np.testing.assert_array_equal(restored.sample(15, cell_types=counts, seed=2).X, synth.X)
    assert not np.array_equal(model.sample(15, cell_types=counts, seed=3).X, synth.X)


def test_per_type_with_a_parametrised_sub_model(adata, tmp_path):
    model = PerTypeGenerator(generator="class_gaussian_pca", params={"n_components": 3})
    model.fit(adata, seed=1, progress=False)
    assert all(sub.params.n_components == 3 for sub in model.models_.values())
    synth = model.sample(6, cell_types={"type_1": 6}, seed=0)
    model.save(tmp_path / "m")
    restored = PerTypeGenerator.load(tmp_path / "m")
    np.testing.assert_allclose(restored.sample(6, cell_types={"type_1": 6}, seed=0).X, synth.X)


def test_per_type_only_selected_types(adata):
    model = PerTypeGenerator(generator="gene_shuffle", types=["type_1"])
    model.fit(adata, seed=0, progress=False)
    assert list(model.models_) == ["type_1"]
    assert model.sample(3, cell_types={"type_1": 3}, seed=0).n_obs == 3
    with pytest.raises(GeneratorError, match="no model for types"):
        model.sample(2, cell_types=["type_0", "type_1"], seed=0)
    with pytest.raises(GeneratorError, match="not in the training data"):
        PerTypeGenerator(generator="gene_shuffle", types=["nope"]).fit(adata, progress=False)


def test_per_type_small_types_error_or_skip(adata):
    data = adata[:61].copy()  # type_0 has 21 cells, type_1 20, type_2 20
    data.obs["cell_type"] = data.obs["cell_type"].astype(str)
    data.obs.iloc[0, data.obs.columns.get_loc("cell_type")] = "lonely"
    with pytest.raises(GeneratorError, match=r"lonely.*min_cells"):
        PerTypeGenerator(generator="train_copy").fit(data, progress=False)
    model = PerTypeGenerator(generator="train_copy", small_types="skip")
    model.fit(data, progress=False)
    assert "lonely" not in model.models_
    with pytest.raises(GeneratorError, match="no model for types"):
        model.sample(1, cell_types=["lonely"], seed=0)


def test_per_type_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="unknown generator"):
        PerTypeGenerator(generator="nope")
    with pytest.raises(ValueError, match="unknown generator"):
        PerTypeGenerator(generator="per_type")  # registered, but a wrapper
    with pytest.raises(ValueError, match=r"small_types must be one of \('error', 'skip'\)"):
        PerTypeGenerator(generator="train_copy", small_types="drop")
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        PerTypeGenerator(generator="class_gaussian_pca", params={"n_comps": 3})
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        PerTypeGenerator(generator="train_copy", typo=1)
    with pytest.raises(ValueError, match="min_cells"):
        PerTypeGenerator(generator="train_copy", min_cells=1)
    with pytest.raises(TypeError, match="both in params and as keywords"):
        PerTypeGenerator("class_gaussian_pca", params={"n_components": 3}, n_components=4)
    # A class is accepted and stored by its registered name.
    assert PerTypeGenerator(generator=GENERATORS["train_copy"]).params.generator == "train_copy"


def test_per_type_positional_generator_and_flat_sub_hyperparameters(adata, tmp_path):
    # The generation pipeline's call: PerTypeGenerator(cls, label_key=..., **preset)
    model = PerTypeGenerator(
        GENERATORS["class_gaussian_pca"], label_key="cell_type", n_components=2, standardize=False, types=["type_0"]
    )
    assert model.params.generator == "class_gaussian_pca"
    assert model.params.params == {"n_components": 2, "standardize": False}
    assert model.params.types == ("type_0",)
    model.fit(adata, seed=0, progress=False)
    assert model.models_["type_0"].params.n_components == 2
    model.save(tmp_path / "flat")
    restored = Generator.load(tmp_path / "flat")
    assert restored.params == model.params
    with pytest.raises(TypeError, match=r"unknown hyperparameter.*n_comps"):
        PerTypeGenerator("class_gaussian_pca", n_comps=2)
