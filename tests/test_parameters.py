"""Runtime parameters keep their siblings in every environment, lists fit on one command line, and every
parameter is checked before the first node runs (a typo stops the run with its message, not a traceback)."""

from __future__ import annotations

import copy

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from cellsynth.config import ConfigError, DownstreamSettings, GenerationSettings
from cellsynth.run_matrix import RunMatrix, _read_parameters
from cellsynth.validation_hook import validate_parameters
from kedro_helpers import run_kedro


def session_params(root, runtime_params, env=None):
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=env, runtime_params=runtime_params) as session:
        return session.load_context().params


@pytest.mark.parametrize("env", [None, "paper"])
def test_runtime_params_keep_sibling_keys_with_an_environment_parameters_file(project, env):
    (project / "conf" / "local" / "parameters_x.yml").write_text("splitting:\n  n_top_genes: 500\n")
    (project / "conf" / "local" / "globals.yml").write_text(
        "dataset:\n  name: mine\n  path: a.h5ad\n  label_key: cell_type\n  batch_key: donor\n  counts_layer: raw\n")
    params = session_params(project, {"splitting": {"seed": 1}, "dataset": {"path": "b.h5ad", "name": "other"}}, env)

    assert params["splitting"]["seed"] == 1
    assert params["splitting"]["n_folds"] == 5 and params["splitting"]["hvg_flavor"] == "seurat_v3"
    if env is None:  # conf/local is the run environment only when no other is named
        assert params["splitting"]["n_top_genes"] == 500
        assert params["dataset"] == {"name": "other", "path": "b.h5ad", "label_key": "cell_type",
                                     "batch_key": "donor", "counts_layer": "raw", "organism": None,
                                     "cluster_if_unlabelled": False}
    else:
        assert params["generation"]["preset"] == "paper"  # the environment's own values stay
        assert params["dataset"]["label_key"] == "seurat_annotations"
    assert params["generation"]["seed"] == 0 and "generators" in params["generation"]


def test_lists_on_one_command_line():
    generation = GenerationSettings.from_params({"generators": "smote+class_gaussian_pca"})
    assert generation.generators == ("smote", "class_gaussian_pca")
    assert GenerationSettings.from_params({"generators": "smote"}).generators == ("smote",)
    assert RunMatrix.from_params({"folds_to_run": "0+2"}).folds == (0, 2)
    assert RunMatrix.from_params({"folds_to_run": 3}).folds == (3,)
    assert DownstreamSettings.from_params({"folds": "0+1"}).folds == (0, 1)
    with pytest.raises(ConfigError, match="folds_to_run"):
        RunMatrix.from_params({"folds_to_run": "0+x"})


def _edit(params, path, value):
    *parents, last = path.split(".")
    for key in parents:
        params = params[key]
    params[last] = value


@pytest.mark.parametrize("env", ["local", "paper", "zheng17", "integrated_pbmc", "pancreas", "pancreas_integrated"])
def test_shipped_parameters_are_valid(env):
    validate_parameters(_read_parameters(env))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("generation.generators", ["smote", "mafx"], r"unknown generator\(s\) \['mafx'\]"),
        ("generation.generators", ["smote", "smote"], "names a generator twice"),
        ("generator_presets.maf.default", {"epochz": 3}, r"generator_presets.maf.default: .*unknown hyperparameter.*epochz"),
        ("generator_presets.moe.default", {"learning_rate": 0}, "learning_rate must be a number > 0"),
        ("preprocessing.qc.max_pct_mito", "five", "preprocessing.qc.max_pct_mito"),
        ("preprocessing.qc.max_pct_mito", 150, r"max_pct_mito=150.0: must be a percentage in \[0, 100\]"),
        ("preprocessing.qc.n_mads_counts", -2, r"n_mads_counts=-2.0: must be a number of MADs > 0"),
        ("preprocessing.qc.max_genes_per_cell", 100, "must be above min_genes_per_cell=200"),
        ("evaluation.knn", 3, r"evaluation: unknown key\(s\) \['knn'\]"),
        ("downstream.interactions.n_perm", 10, "downstream.interactions: unknown key"),
        ("splitting.hvg_flavor", "pearson", "splitting.hvg_flavor"),
        ("folds_to_run", [7], r"folds_to_run=\[7\]"),
        ("datasets", [{"name": "a", "path": "a.h5ad"}], r"datasets\[0\] lacks \['label_key'\]"),
        ("downstream.folds", [3], r"downstream.folds=\[3\]"),
    ],
)
def test_a_wrong_parameter_is_named(path, value, message):
    params = copy.deepcopy(_read_parameters("local"))
    _edit(params, path, value)
    with pytest.raises(ConfigError, match=message):
        validate_parameters(params)


def test_count_generators_on_batch_corrected_data_are_refused_naming_the_others():
    params = copy.deepcopy(_read_parameters("integrated_pbmc"))
    params["generation"]["generators"] = ["nb_latent_flow", "smote", "scvi"]
    with pytest.raises(ConfigError, match=r"\['nb_latent_flow', 'scvi'\] model raw counts.*generation.generators=smote"):
        validate_parameters(params)
    params["integration"]["method"] = "none"  # uncorrected: the counts and X agree
    validate_parameters(params)


def test_a_wrong_generator_stops_kedro_run_before_any_node_with_its_message(project):
    done = run_kedro(project, "run", "--pipelines", "generation", "--params", "generation.generators=smote+mafx")
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "Error: generation.generators: unknown generator(s) ['mafx']" in done.stderr
    assert "Traceback" not in output and "Running node" not in output
    log = (project / "logs" / "last_error.log").read_text()
    assert log.startswith("Traceback") and "ConfigError" in log


@pytest.mark.parametrize("path", ["data/03_primary/normalised_cells.h5ad", "data/05_model_input/fold_0/train.h5ad"])
def test_an_input_inside_the_output_folders_is_refused(tmp_path, path):
    params = copy.deepcopy(_read_parameters("local"))
    params["dataset"]["path"] = path
    with pytest.raises(ConfigError, match=r"dataset.path=.* is inside data/0\d_\w+, where cellsynth writes its outputs"):
        validate_parameters(params, project_path=tmp_path)
    params["dataset"]["path"] = str(tmp_path / "data" / "01_raw" / "mine.h5ad")
    validate_parameters(params, project_path=tmp_path)
