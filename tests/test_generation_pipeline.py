"""The generation pipeline: one generator × fold end to end in a Kedro session, tracked in MLflow."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from cellsynth.generators import q3_upsample_counts
from cellsynth.pipelines.generation.nodes import build_generator, plan_generation
from cellsynth.pipelines.generation.pipeline import create_pipeline
from cellsynth.run_matrix import RunMatrix
from conftest import RAW_DATA
from kedro_helpers import run_session


def test_one_namespace_per_generator_and_fold_and_no_generator_reads_the_test_cells():
    pipe = create_pipeline(RunMatrix(folds=(0, 2), generators=("maf", "train_copy")))
    generator_nodes = [n for n in pipe.nodes if n.namespace not in ("fold_0", "fold_2")]
    assert sorted(n.namespace for n in generator_nodes) == ["maf.fold_0", "maf.fold_2", "train_copy.fold_0",
                                                             "train_copy.fold_2"]
    assert "maf.fold_2.synthetic" in pipe.outputs() and "fold_2.train" in pipe.inputs()
    assert not any(name.endswith(".test") for n in generator_nodes for name in n.inputs)
    plans = [n for n in pipe.nodes if n.namespace == "fold_2"]
    assert len(plans) == 1 and set(plans[0].inputs) == {"fold_2.train", "fold_2.test", "params:generation"}


def test_upsample_counts_follow_the_q3_rule(tiny_adata_factory):
    train = tiny_adata_factory(100, 5, 4, seed=0)
    sizes = [10, 20, 30, 40]
    labels = np.repeat([f"type_{i}" for i in range(4)], sizes)
    train = train[:100].copy()
    train.obs["cell_type"] = pd.Categorical(labels)
    plan = plan_generation(train, train[:7], {"seed": 0}, fold=0)
    counts = plan["upsample"]
    q3 = int(np.quantile(sizes, 0.75, method="nearest"))
    assert q3 == 30
    assert {k: v for k, v in counts.items() if v} == {"type_0": 20, "type_1": 10}
    assert counts == q3_upsample_counts(dict(zip([f"type_{i}" for i in range(4)], sizes, strict=True)))
    assert sum(plan["matched"].values()) == 7


def test_unconditional_preset_with_one_model_is_a_clear_error():
    with pytest.raises(ValueError, match="strategy: per_type"):
        build_generator("maf", {"conditional": False}, "conditional")


@pytest.fixture
def project(project):
    """The project copy with a 600-cell PBMC3K subset as ``data/01_raw/subset.h5ad``."""
    full = ad.read_h5ad(RAW_DATA / "pbmc3k_counts.h5ad")
    keep = np.sort(np.random.default_rng(1).choice(full.n_obs, 600, replace=False))
    full[keep].copy().write_h5ad(project / "data" / "01_raw" / "subset.h5ad")
    return project


def test_generation_runs_one_generator_and_fold_end_to_end(project):
    params = {
        "dataset": {"name": "subset", "path": str(project / "data/01_raw/subset.h5ad"), "label_key": "seurat_annotations"},
        "splitting": {"n_top_genes": 100},
        "generation": {"generators": ["maf"], "progress": False},
        "generator_presets": {"maf": {"default": {"epochs": 3, "n_layers": 2, "hidden_features": 32}}},
    }
    run_session(project, "generation", params)

    out = project / "data" / "07_model_output" / "subset" / "maf" / "fold_0"
    test = ad.read_h5ad(project / "data" / "05_model_input" / "subset" / "fold_0" / "test.h5ad")
    synthetic = ad.read_h5ad(out / "synthetic.h5ad")
    upsample = ad.read_h5ad(out / "upsample.h5ad")
    assert synthetic.shape == (test.n_obs, 100)
    assert list(synthetic.var_names) == list(test.var_names)
    assert synthetic.obs["generator"].eq("maf").all() and (synthetic.X >= 0).all()
    assert upsample.n_obs > 0
    history = pd.read_parquet(out / "training_history.parquet")
    assert set(history["series"]) >= {"train_loss", "val_loss"}
    assert (project / "data" / "06_models" / "subset" / "maf" / "fold_0" / "generator.json").is_file()

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cellsynth-subset")
    runs = client.search_runs([experiment.experiment_id])
    child = next(r for r in runs if r.data.tags.get("generator") == "maf")
    parent = next(r for r in runs if r.info.run_id == child.data.tags["mlflow.parentRunId"])
    assert parent.data.params["splitting.n_top_genes"] == "100"
    assert child.data.params["hp.hidden_features"] == "32"
    assert child.data.tags["cellsynth.namespace"] == "maf.fold_0"
    assert "mlflow_run_id" not in synthetic.uns["cellsynth"] and synthetic.uns["cellsynth"]["seed"] == 0
    losses = client.get_metric_history(child.info.run_id, "train_loss")
    assert len(losses) == 3 and [m.step for m in losses] == [0, 1, 2]
    assert {"fit_seconds", "sample_seconds", "peak_rss_gib_fit"} <= set(child.data.metrics)
    # artifacts lie in mlartifacts/ beside the store, under a location relative to it
    assert experiment.artifact_location == "mlflow-artifacts:/cellsynth-subset"
    artifacts = project / "mlartifacts" / "cellsynth-subset"
    assert [p.name for p in (artifacts / child.info.run_id / "artifacts").iterdir()] == ["checkpoint"]

    # A later `kedro run` of the evaluation logs into the same generator × fold run (keyed on its namespace),
    # and files the report under its own parent run.
    params["evaluation"] = {"n_pca": 10, "utility": {"n_estimators": 10, "n_jobs": 1}, "figures": {"dpi": 40}}
    run_session(project, "evaluation", params)
    child = client.get_run(child.info.run_id)
    assert 0.0 <= child.data.metrics["eval/honest/c2st_auc"] <= 1.0
    assert "eval/utility/f1_macro" in child.data.metrics
    parents = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("cellsynth.role") == "parent"]
    assert sorted(r.data.tags["kedro.pipelines"] for r in parents) == ["evaluation", "generation"]
    evaluation_run = next(r for r in parents if r.data.tags["kedro.pipelines"] == "evaluation")
    assert {p.name for p in (artifacts / evaluation_run.info.run_id / "artifacts").iterdir()} >= {"evaluation", "report"}
    # the child run carries the headline metrics once, at the top level; the parent does not repeat them
    assert set(child.data.metrics) >= {"c2st", "wd", "precision", "recall", "memorisation", "f1_macro"}
    assert child.data.metrics["c2st"] == child.data.metrics["eval/honest/c2st_auc"]
    assert not [k for k in child.data.metrics if k.startswith("eval/run/")]  # fit_seconds etc.: logged once
    assert not [k for k in evaluation_run.data.metrics if k.startswith("eval/")]
    assert evaluation_run.data.metrics["x_floor/maf/wd"] > 0
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.tags["kedro.env"] == "local"
