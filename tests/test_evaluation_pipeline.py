"""The Kedro evaluation pipeline: structure for a RunMatrix, and one run on fake generation outputs."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from kedro.io.catalog_config_resolver import CatalogConfigResolver

from cellsynth.evaluation import COLUMNS, FLOOR, REAL_ONLY, REAL_TRAIN_VS_TEST
from cellsynth.pipelines.evaluation import create_pipeline
from cellsynth.run_matrix import RunMatrix
from kedro_helpers import base_catalog, run_session

FOLD_NODES = ["fit_reference_space", "split_test_halves", "evaluate_real_data", "classify_real_only", "evaluate_real_fair"]
GENERATOR_NODES = ["evaluate_synthetic", "classify_with_synthetic", "evaluate_synthetic_fair"]
REPORT_NODES = ["collect_metrics", "summarise_metrics", "make_tables", "make_verdict", "plot_metrics_vs_floor",
                "plot_training_curves", "build_evaluation_section"]


def test_pipeline_builds_for_a_run_matrix():
    matrix = RunMatrix(folds=(0, 2), generators=("maf", "train_copy"))
    pipe = create_pipeline(matrix)
    expected = {f"fold_{k}.{n}" for k in (0, 2) for n in FOLD_NODES}
    expected |= {f"{g}.fold_{k}.{n}" for g in ("maf", "train_copy") for k in (0, 2) for n in GENERATOR_NODES}
    expected |= set(REPORT_NODES) | {f"plot_{f}_fold_{k}" for f in ("reference_pca", "gene_figures") for k in (0, 2)}
    expected |= {f"verdict_of_run_{g}_fold_{k}" for g in ("maf", "train_copy") for k in (0, 2)}
    assert {n.name for n in pipe.nodes} == expected
    by_name = {n.name: n for n in pipe.nodes}
    assert by_name["fold_2.fit_reference_space"].namespace == "fold_2"
    assert by_name["maf.fold_0.evaluate_synthetic"].namespace == "maf.fold_0"
    assert by_name["collect_metrics"].namespace is None
    synth = by_name["maf.fold_0.evaluate_synthetic"]
    assert set(synth.inputs) == {"fold_0.train", "fold_0.test", "maf.fold_0.synthetic", "maf.fold_0.upsample",
                                 "fold_0.reference_space", "fold_0.honest_split",
                                 "params:evaluation", "params:dataset"}
    assert set(synth.outputs) == {"maf.fold_0.distribution_metrics", "maf.fold_0.honest_sample"}
    assert {"maf.fold_0.synthetic", "train_copy.fold_0.synthetic"} <= set(by_name["plot_reference_pca_fold_0"].inputs)
    # the pipeline only needs what generation saved, plus parameters
    free = pipe.inputs()
    assert free == {f"fold_{k}.{s}" for k in (0, 2) for s in ("train", "test")} | {
        f"{g}.fold_{k}.{s}" for g in ("maf", "train_copy") for k in (0, 2)
        for s in ("synthetic", "upsample", "training_history")} | {"params:evaluation", "params:dataset"}
    # every dataset it writes is a catalog entry (factory patterns of conf/base/catalog*.yml)
    config = base_catalog()
    resolver = CatalogConfigResolver(config)
    unmatched = [d for d in pipe.all_outputs() | free
                 if not d.startswith("params:") and d not in config and resolver.match_dataset_pattern(d) is None]
    assert unmatched == []
    # without generators: the fold-level nodes and the report still build
    assert {n.name for n in create_pipeline(RunMatrix(folds=(1,), generators=())).nodes} == {
        f"fold_1.{n}" for n in FOLD_NODES} | set(REPORT_NODES) | {"plot_reference_pca_fold_1", "plot_gene_figures_fold_1"}


def write_fake_generation_outputs(root: Path, factory, generators: tuple[str, ...]) -> None:
    """What the generation pipeline writes for fold 0, from a tiny dataset made here."""
    full = factory(480, 40, 3, seed=5)
    full.obs_names = [f"cell_{i}" for i in range(full.n_obs)]
    train, test, fresh = full[:240].copy(), full[240:360].copy(), full[360:].copy()
    folder = root / "data" / "05_model_input" / "tiny" / "fold_0"
    folder.mkdir(parents=True)
    train.write_h5ad(folder / "train.h5ad")
    test.write_h5ad(folder / "test.h5ad")
    rng = np.random.default_rng(0)
    for name in generators:
        out = root / "data" / "07_model_output" / "tiny" / name / "fold_0"
        out.mkdir(parents=True)
        source = train if name == "train_copy" else fresh
        for mode, n in (("matched", test.n_obs), ("upsample", 20)):
            rows = rng.choice(source.n_obs, n, replace=False)
            cells = ad.AnnData(
                X=np.asarray(source.X[rows], dtype=np.float32),
                obs=pd.DataFrame({"cell_type": source.obs["cell_type"].to_numpy()[rows], "synthetic": True,
                                  "generator": name}, index=[f"{name}_{mode}_{i}" for i in range(n)]),
                var=pd.DataFrame(index=train.var_names),
            )
            cells.uns["cellsynth"] = {"generator": name, "fold": 0, "mode": mode,
                                      "fit_seconds": 2.0, "sample_seconds": 0.5}
            cells.write_h5ad(out / ("synthetic.h5ad" if mode == "matched" else "upsample.h5ad"))
        epochs = 0 if name == "train_copy" else 3
        pd.DataFrame({"generator": name, "fold": 0, "epoch": list(range(epochs)) * 2,
                      "series": ["train_loss"] * epochs + ["val_loss"] * epochs,
                      "value": np.linspace(3, 1, 2 * epochs)}).astype({"fold": "int64", "epoch": "int64"}).to_parquet(
            out / "training_history.parquet")


@pytest.mark.slow
def test_kedro_run_evaluation_on_fake_generation_outputs(project, tiny_adata_factory):
    root = project
    generators = ("fake_flow", "train_copy")
    write_fake_generation_outputs(root, tiny_adata_factory, generators)
    params = {
        "dataset": {"name": "tiny"},
        "folds_to_run": [0],
        "generation": {"generators": list(generators)},
        "evaluation": {"n_pca": 10, "utility": {"n_estimators": 10, "n_jobs": 1}, "figures": {"dpi": 40}},
        "tracking": {"enabled": False},
    }
    run_session(root, "evaluation", params)

    reporting = root / "data" / "08_reporting" / "tiny"
    metrics = pd.read_parquet(reporting / "metrics.parquet")
    assert list(metrics.columns) == COLUMNS
    assert {REAL_TRAIN_VS_TEST, FLOOR, REAL_ONLY, *generators} == set(metrics["generator"])
    # no "counts" rows: these cells carry no layers["counts"] (the report says "skipped: no counts")
    assert set(metrics["protocol"]) == {"paper", "paper_upsample", "honest", "utility", "run", "fair", "within_type"}
    assert (metrics["dataset"] == "tiny").all()
    copy = metrics.query("generator == 'train_copy' and protocol == 'honest' and cell_type == 'all'")
    assert copy.set_index("metric").loc["memorization", "value"] < 0.1
    split = pd.read_parquet(root / "data" / "05_model_input" / "tiny" / "fold_0" / "honest_split.parquet")
    assert sorted(split["half"].unique()) == ["A", "B"] and len(split) == 120
    verdict = pd.read_csv(reporting / "verdict.csv").set_index("generator")
    assert set(verdict.index) == set(generators) and verdict.loc["train_copy", "not_copying"] == "✗"
    assert bool(verdict.loc["train_copy", "sanity_baseline"]) and not bool(verdict.loc["fake_flow", "sanity_baseline"])
    per_run = pd.read_csv(root / "data" / "07_model_output" / "tiny" / "evaluation" / "train_copy" / "fold_0" / "verdict.csv")
    assert per_run["not_copying"].tolist() == ["✗"]
    for name in ("table1_paper", "table3_utility", "table_honest", "table_per_type", "table_fair", "verdict"):
        assert (reporting / f"{name}.csv").is_file() and (reporting / f"{name}.md").is_file()
    table1 = pd.read_csv(reporting / "table1_paper.csv")
    assert list(table1.columns) == ["metric", REAL_TRAIN_VS_TEST, FLOOR, "fake_flow", "train_copy (sanity)"]
    figures = ("pca_fold_0", "umap_fold_0", "gene_statistics_fold_0", "gene_correlations_fold_0",
               "metrics_vs_floor", "training_curves")
    for figure in figures:
        assert (reporting / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    report = (reporting / "report.html").read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") == len(figures) and "http" not in report
    assert report.count("Read: ") >= 4  # the new figures and the PCA say how to read them
    assert "Table 1" in report and "Table 3" in report and "real (B vs A floor)" in report
    assert report.index("Verdict") < report.index("Table 1")  # the verdict comes first
    assert "Fair protocol" in report and "skipped: no counts" in report
    # downstream never ran here: the report says so instead of leaving it out (or showing an old file)
    assert 'id="downstream"' in report and "Not computed." in report and "kedro run --pipelines downstream" in report
    assert (root / "data" / "06_models" / "tiny" / "evaluation" / "fold_0" / "reference_space.npz").is_file()
    assert (root / "data" / "07_model_output" / "tiny" / "evaluation" / "fake_flow" / "fold_0" / "honest_sample.parquet").is_file()
