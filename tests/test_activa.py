"""ACTIVA generator: conditioning honours the requested type, training is stable and reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from sklearn.decomposition import PCA

from cellsynth.generators import GENERATORS, Generator
from cellsynth.generators.activa import ActivaGenerator

# Small networks so a fit takes a second or two on one CPU thread.
SMALL = {"latent_dim": 4, "hidden": (32,), "classifier_hidden": (16,), "batch_size": 32, "margin": 10.0,
         "learning_rate": 3e-3, "classifier_learning_rate": 3e-3, "warmup_epochs": 3}


def separated_adata(n_per_type: int = 60, n_genes: int = 20, seed: int = 0) -> AnnData:
    """Three non-negative, well-separated types: each has its own block of highly expressed genes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_type)
    means = np.full((3, n_genes), 0.3)
    block = n_genes // 3
    for t in range(3):
        means[t, t * block : (t + 1) * block] = 2.5
    X = np.maximum(means[labels] + 0.3 * rng.normal(size=(len(labels), n_genes)), 0)
    X[rng.random(X.shape) < 0.3] = 0.0  # dropout-like zeros
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type_{i}" for i in labels])},
                       index=[f"c{i}" for i in range(len(labels))])
    return AnnData(X=X.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


@pytest.fixture(scope="module")
def toy():
    return separated_adata()


@pytest.fixture(scope="module")
def fitted(toy):
    torch.set_num_threads(1)
    model = ActivaGenerator(label_key="cell_type", **SMALL, epochs=40, patience=None)
    seen: list[tuple[int, dict]] = []
    history = model.fit(toy, seed=0, progress=False, on_epoch=lambda e, m: seen.append((e, dict(m))))
    return model, history, seen


def test_registered():
    assert GENERATORS["activa"] is ActivaGenerator
    assert ActivaGenerator.name == "activa"


def test_conditional_samples_sit_closest_to_their_own_type(toy, fitted):
    model, _, _ = fitted
    X = np.asarray(toy.X)
    types = toy.obs["cell_type"].astype(str).to_numpy()
    pca = PCA(5, random_state=0).fit(X)
    real = {t: pca.transform(X[types == t]).mean(axis=0) for t in np.unique(types)}
    for t in real:
        synth = model.sample(80, cell_types={t: 80}, seed=7)
        assert (synth.obs["cell_type"].astype(str) == t).all()
        centroid = pca.transform(np.asarray(synth.X)).mean(axis=0)
        distances = {u: float(np.linalg.norm(centroid - real[u])) for u in real}
        others = min(d for u, d in distances.items() if u != t)
        # Closest to its own type, and by a wide margin (the types' centroids are far apart).
        assert distances[t] < 0.5 * others, (t, distances)


def test_training_is_reported_and_learns(fitted):
    _, history, seen = fitted
    assert [e for e, _ in seen] == list(range(len(history.train_loss)))
    for key in ("train_loss", "val_loss", "encoder_loss", "decoder_loss", "kl_real", "kl_sampled", "classifier_loss",
                "type_loss", "val_accuracy", "val_sampled_accuracy"):
        assert key in seen[-1][1], key
        values = history.extra.get(key) if key not in ("train_loss", "val_loss") else getattr(history, key)
        assert len(values) == len(history.train_loss)
        assert np.isfinite(values).all()
    # Every epoch (warm-up included) reports the encoder's KL of reconstructed and sampled cells.
    assert all(len(history.extra[k]) == len(history.train_loss) for k in ("kl_reconstructed", "kl_sampled"))
    assert min(history.val_loss) < 0.8 * history.val_loss[0]
    assert history.best_epoch is not None and history.best_epoch >= SMALL["warmup_epochs"]
    assert history.extra["val_accuracy"][-1] > 0.9
    assert history.extra["val_sampled_accuracy"][history.best_epoch] > 0.9


def test_early_stopping_restores_the_best_introspective_epoch(toy):
    model = ActivaGenerator(label_key="cell_type", **{**SMALL, "learning_rate": 3e-2}, epochs=60, patience=2)
    history = model.fit(toy, seed=1, progress=False)
    assert history.stopped_early
    assert len(history.train_loss) < 60
    intro = history.val_loss[SMALL["warmup_epochs"]:]
    assert history.best_epoch == SMALL["warmup_epochs"] + int(np.argmin(intro))


def test_decoder_output_is_nonnegative_with_exact_zeros(fitted):
    model, _, _ = fitted
    raw = model._sample(np.repeat(np.arange(3), 30), seed=3)  # before the base class's clipping
    assert (raw >= 0).all()
    assert (raw == 0).mean() > 0.05


def test_snapped_output_leaves_no_value_in_a_genes_gap_and_keeps_the_mean(fitted):
    model, _, _ = fitted
    floor = model.networks.gene_floor.numpy()
    assert (floor > 0).all()
    codes = np.repeat(np.arange(3), 400)
    snapped = model._sample(codes, seed=3)
    assert not ((snapped > 0) & (snapped < floor)).any()
    raw = _with_output(model, "mean")._sample(codes, seed=3)
    assert ((raw > 0) & (raw < floor)).any()  # there was something to snap
    np.testing.assert_allclose(snapped.mean(axis=0), raw.mean(axis=0), atol=0.15)


def _with_output(model: ActivaGenerator, output: str) -> ActivaGenerator:
    import dataclasses

    twin = ActivaGenerator(label_key=model.label_key, **{**dataclasses.asdict(model.params), "output": output})
    twin.var_names_, twin.cell_types_, twin.type_counts_ = model.var_names_, model.cell_types_, model.type_counts_
    twin._nets = model.networks
    return twin


def test_seeded_sampling_and_round_trip(fitted, tmp_path):
    model, _, _ = fitted
    a = model.sample(30, seed=4)
    b = model.sample(30, seed=4)
    c = model.sample(30, seed=5)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.allclose(a.X, c.X)
    model.save(tmp_path / "activa")
    restored = Generator.load(tmp_path / "activa")
    assert restored.params == model.params
    np.testing.assert_allclose(restored.sample(30, seed=4).X, a.X, rtol=1e-6, atol=1e-6)


def test_same_fit_seed_same_model(toy):
    kwargs = {**SMALL, "epochs": 4, "patience": None}
    first = ActivaGenerator(**kwargs)
    second = ActivaGenerator(**kwargs)
    h1 = first.fit(toy, seed=2, progress=False)
    h2 = second.fit(toy, seed=2, progress=False)
    np.testing.assert_allclose(h1.val_loss, h2.val_loss, rtol=1e-5)
    np.testing.assert_allclose(first.sample(10, seed=0).X, second.sample(10, seed=0).X, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"condition_on": "oracle"}, "condition_on"),
        ({"hidden": (0,)}, "hidden"),
        ({"margin": -1.0}, "margin"),
        ({"validation_fraction": 0.0, "patience": 3}, "patience"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
    ],
)
def test_bad_hyperparameters_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        ActivaGenerator(**bad)


def test_yaml_lists_become_tuples():
    model = ActivaGenerator(hidden=[64, 32], classifier_hidden=[8])
    assert model.params.hidden == (64, 32) and model.params.classifier_hidden == (8,)
