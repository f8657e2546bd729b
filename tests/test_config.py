"""Typed settings: one home for each default, strict parsing, and environments that override a block."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml
from anndata import AnnData

from cellsynth import config
from cellsynth.config import ConfigError, DownstreamSettings, EvaluationSettings, IntegrationSettings
from conftest import PROJECT_ROOT
from kedro_helpers import make_project_copy

BLOCKS = {
    "preprocessing": config.PreprocessingSettings,
    "integration": config.IntegrationSettings,
    "splitting": config.SplittingSettings,
    "generation": config.GenerationSettings,
    "evaluation": config.EvaluationSettings,
    "downstream": config.DownstreamSettings,
    "tracking": config.TrackingSettings,
}
# Reference data kept in the YAML only (textbook markers of the embedded datasets), not a setting default.
NOT_DEFAULTS = {("downstream", "markers", "expected"), ("preprocessing", "qc_by_dataset")}


def base_parameters() -> dict:
    merged: dict = {}
    for path in sorted((PROJECT_ROOT / "conf" / "base").glob("parameters*.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


def _without(settings: dict, path: tuple[str, ...]) -> dict:
    if len(path) == 1:
        return {k: v for k, v in settings.items() if k != path[0]}
    return {**settings, path[0]: _without(settings[path[0]], path[1:])}


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_every_default_in_code_equals_the_documented_one_in_conf_base(block):
    cls = BLOCKS[block]
    documented = cls.from_params(base_parameters()[block]).to_dict()
    in_code = cls().to_dict()
    for path in NOT_DEFAULTS:
        if path[0] == block:
            documented, in_code = _without(documented, path[1:]), _without(in_code, path[1:])
    assert documented == in_code


def test_conf_base_has_a_block_for_every_settings_class_and_no_unknown_key():
    params = base_parameters()
    assert set(BLOCKS) <= set(params)
    settings_classes = {c for c in vars(config).values()
                        if isinstance(c, type) and issubclass(c, config.Settings) and c.block and "." not in c.block}
    assert settings_classes - set(BLOCKS.values()) == {config.DatasetSettings}  # globals.yml, checked in test_kedro


def test_an_unknown_key_is_an_error_that_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"evaluation.c2st: unknown key\(s\) \['clasifier'\]; valid keys: "
                                          r"\['classifier', 'enabled', 'n_splits', 'n_threads', 'small_set_cells'\]"):
        EvaluationSettings.from_params({"c2st": {"clasifier": "logistic"}})


def test_choices_and_types_are_checked_with_the_allowed_values_named():
    with pytest.raises(ConfigError, match=r"integration.method: 'harmony' is not one of \['none', 'combat', 'linear'\]"):
        IntegrationSettings.from_params({"method": "harmony"})
    with pytest.raises(ConfigError, match=r"evaluation.n_pca: expected int, got '50'"):
        EvaluationSettings.from_params({"n_pca": "50"})
    with pytest.raises(ConfigError, match="missing required key 'label_key'"):
        config.DatasetSettings.from_params({"name": "x", "path": "x.h5ad"})


def test_nested_blocks_keep_their_siblings_defaults_and_values_are_typed():
    settings = EvaluationSettings.from_params({"utility": {"n_estimators": 10}, "mmd_max_cells": None})
    assert settings.utility == config.UtilitySettings(n_estimators=10)
    assert settings.c2st == config.C2STSettings() and settings.mmd_max_cells is None
    assert DownstreamSettings.from_params({"folds": [0, 2]}).folds == (0, 2)
    assert DownstreamSettings.from_params({"folds": "all"}).folds == "all"
    assert config.PreprocessingSettings.from_params({"target_sum": 10000}).target_sum == 10000.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 3


def _two_batches(seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 1.0, size=(60, 8)).astype(np.float32)
    X[30:] += 1.5  # batch effect
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.tile(["a", "b"], 30)),
                        "batch": pd.Categorical(np.repeat(["one", "two"], 30))},
                       index=[f"c{i}" for i in range(60)])
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(8)]))


def test_an_environment_overriding_integration_without_method_behaves_like_the_documented_default(tmp_path):
    """An environment's block is merged key by key into base's (settings.py): the missing ``method`` is the default."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from cellsynth.data import integration
    from cellsynth.pipelines.downstream.pipeline import correction_method
    from cellsynth.pipelines.preprocessing.nodes import correct_batches

    root = make_project_copy(tmp_path)
    (root / "conf" / "strict").mkdir()
    (root / "conf" / "strict" / "parameters_preprocessing.yml").write_text(
        "integration:\n  protect_cell_type: true\n"
        "datasets:\n  - {name: a, path: a.h5ad, label_key: l}\n  - {name: b, path: b.h5ad, label_key: l}\n")
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env="strict") as session:
        params = session.load_context().params
    documented = base_parameters()["integration"]["method"]
    assert params["integration"]["method"] == documented and params["integration"]["protect_cell_type"]

    cells = _two_batches()
    corrected = correct_batches(cells, params["integration"])
    expected = integration.correct_batch_effects(cells, documented, protect_cell_type=True)
    np.testing.assert_array_equal(np.asarray(corrected.X), np.asarray(expected.X))
    assert corrected.uns["batch_correction"]["method"] == documented
    assert correction_method(params) == documented  # downstream assumes the same correction
