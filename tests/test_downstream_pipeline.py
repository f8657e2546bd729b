"""The Kedro downstream pipeline: structure for a RunMatrix, fold choice, and one run on real cells."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from kedro.io.catalog_config_resolver import CatalogConfigResolver

from cellsynth.pipelines.downstream import create_pipeline
from cellsynth.pipelines.downstream.pipeline import downstream_folds
from cellsynth.run_matrix import RunMatrix
from kedro_helpers import PROJECT_ROOT, base_catalog, run_session

FOLD_NODES = ["real_cell_markers", "reference_markers", "reference_interactions", "real_train_vs_test"]
GENERATOR_NODES = ["synthetic_markers", "synthetic_interactions", "score_downstream"]
REPORT_NODES = ["collect_marker_preservation", "collect_interactions_rmse", "textbook_markers_by_set",
                "build_downstream_section"]


def test_pipeline_builds_for_a_run_matrix():
    matrix = RunMatrix(folds=(0, 2), generators=("maf", "train_copy"))
    pipe = create_pipeline(matrix, folds=(0, 2))
    expected = {f"fold_{k}.{n}" for k in (0, 2) for n in FOLD_NODES}
    expected |= {f"{g}.fold_{k}.{n}" for g in ("maf", "train_copy") for k in (0, 2) for n in GENERATOR_NODES}
    expected |= set(REPORT_NODES) | {f"plot_interactions_fold_{k}" for k in (0, 2)}
    assert {n.name for n in pipe.nodes} == expected
    by_name = {n.name: n for n in pipe.nodes}
    assert by_name["maf.fold_0.synthetic_interactions"].namespace == "maf.fold_0"
    assert set(by_name["maf.fold_0.synthetic_interactions"].inputs) == {
        "fold_0.train", "maf.fold_0.synthetic", "maf.fold_0.upsample", "params:downstream"}
    # only what generation saved, plus parameters
    free = pipe.inputs()
    assert free == {f"fold_{k}.{s}" for k in (0, 2) for s in ("train", "test")} | {
        f"{g}.fold_{k}.{s}" for g in ("maf", "train_copy") for k in (0, 2) for s in ("synthetic", "upsample")
    } | {"params:downstream", "params:dataset"}
    # every dataset it writes is a catalog entry, and none collides with another pipeline's
    config = base_catalog()
    resolver = CatalogConfigResolver(config)
    unmatched = [d for d in pipe.all_outputs() | free
                 if not d.startswith("params:") and d not in config and resolver.match_dataset_pattern(d) is None]
    assert unmatched == []
    own = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "catalog_downstream.yml").read_text())
    for name in pipe.all_outputs():
        assert resolver.match_dataset_pattern(name) in own or name in own, name
    assert {"marker_preservation", "interactions_rmse", "downstream_section"} <= pipe.all_outputs()


def test_fold_choice():
    matrix = RunMatrix(folds=(1, 3, 4), generators=())
    assert downstream_folds(matrix, "first") == (1,)
    assert downstream_folds(matrix, "all") == (1, 3, 4)
    assert downstream_folds(matrix, [3, 4]) == (3, 4)
    assert downstream_folds(matrix, 4) == (4,)
    with pytest.raises(ValueError, match="folds_to_run"):
        downstream_folds(matrix, [0])


def _write_fold(root: Path, generators: tuple[str, ...]) -> None:
    """A small real fold 0 (PBMC3K cells, log-normalised, 1000 genes) and fake generator outputs."""
    import scanpy as sc

    raw = ad.read_h5ad(PROJECT_ROOT / "data" / "01_raw" / "pbmc3k_counts.h5ad", backed="r")
    labels = raw.obs["seurat_annotations"].astype(str)
    rng = np.random.default_rng(0)
    types = {"B": 60, "CD14+ Mono": 60, "NK": 50, "Platelet": 8}
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == t), n, replace=False) for t, n in types.items()])
    cells = raw[np.sort(picked)].to_memory()
    cells.obs = pd.DataFrame({"cell_type": labels.to_numpy()[np.sort(picked)]}, index=cells.obs_names)
    sc.pp.filter_genes(cells, min_cells=5)
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    keep = np.argsort(-np.asarray(cells.X.power(2).mean(axis=0)).ravel())[:1000]
    cells = cells[:, np.sort(keep)].copy()
    cells.X = sp.csr_matrix(cells.X, dtype=np.float32)
    test_rows = rng.random(cells.n_obs) < 0.3
    train, test = cells[~test_rows].copy(), cells[test_rows].copy()
    folder = root / "data" / "05_model_input" / "pbmc3k" / "fold_0"
    folder.mkdir(parents=True)
    train.write_h5ad(folder / "train.h5ad")
    test.write_h5ad(folder / "test.h5ad")
    for name in generators:
        out = root / "data" / "07_model_output" / "pbmc3k" / name / "fold_0"
        out.mkdir(parents=True)
        for mode, n in (("matched", test.n_obs), ("upsample", 40)):
            rows = rng.choice(train.n_obs, n, replace=True)
            X = train.X[rows].toarray()
            if name == "noisy":
                X = np.clip(X + rng.normal(0, 0.5, X.shape), 0, None).astype(np.float32)
            synthetic = ad.AnnData(X=X, obs=pd.DataFrame({"cell_type": train.obs["cell_type"].to_numpy()[rows]},
                                                         index=[f"{name}_{mode}_{i}" for i in range(n)]),
                                   var=pd.DataFrame(index=train.var_names))
            synthetic.uns["cellsynth"] = {"generator": name, "fold": 0, "mode": mode}
            synthetic.write_h5ad(out / ("synthetic.h5ad" if mode == "matched" else "upsample.h5ad"))


@pytest.mark.slow
def test_kedro_run_downstream_on_real_cells(project):
    root = project
    generators = ("train_copy", "noisy")
    _write_fold(root, generators)
    params = {
        "dataset": {"name": "pbmc3k"},
        "folds_to_run": [0],
        "generation": {"generators": list(generators)},
        "downstream": {"interactions": {"n_perms": 50}, "figures": {"dpi": 40}},
        "tracking": {"enabled": False},
    }
    run_session(root, "downstream", params)

    reporting = root / "data" / "08_reporting" / "pbmc3k"
    rmse = pd.read_csv(reporting / "interactions_rmse.csv")
    assert set(zip(rmse["generator"], rmse["cells"], strict=True)) == {
        ("real train vs test", "real training cells"), ("train_copy", "synthetic only"),
        ("train_copy", "real + synthetic"), ("noisy", "synthetic only"), ("noisy", "real + synthetic")}
    only = rmse[rmse["cells"] == "synthetic only"].set_index("generator")
    assert only.loc["train_copy", "rmse"] < only.loc["noisy", "rmse"]
    preservation = pd.read_csv(reporting / "marker_preservation.csv")
    overall = preservation[preservation["cell_type"] == "all"].set_index("generator")
    assert overall.loc["train_copy", "jaccard_top"] > overall.loc["noisy", "jaccard_top"]
    check = pd.read_csv(reporting / "downstream" / "fold_0" / "textbook_markers.csv")
    assert check.groupby("cell_type")["type_ok"].first().all()
    candidates = pd.read_csv(reporting / "downstream" / "fold_0" / "candidate_markers_real.csv")
    assert {"cell_type", "gene", "pval_adj", "logfc"} <= set(candidates.columns)
    for figure in ("marker_violins_real_fold_0", "marker_violins_noisy_fold_0", "interaction_heatmaps_fold_0",
                   "interaction_dotplot_fold_0"):
        assert (reporting / "downstream" / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    section = (reporting / "sections" / "downstream.html").read_text(encoding="utf-8")
    assert section.count("data:image/png;base64,") == 5 and "http" not in section
    # the report holds it, and says that the evaluation (never run here) was not computed
    report = (reporting / "report.html").read_text(encoding="utf-8")
    assert section.strip() in report and "kedro run --pipelines evaluation" in report


def test_batch_corrected_runs_explain_instead_of_analysing(monkeypatch):
    from cellsynth import run_matrix
    from cellsynth.pipelines.downstream.nodes import explain_downstream_skipped
    from cellsynth.pipelines.downstream.pipeline import correction_method

    two = [{"name": "a"}, {"name": "b"}]
    assert correction_method({"datasets": two, "integration": {"method": "combat"}}) == "combat"
    assert correction_method({"datasets": two, "integration": {"method": "none"}}) is None
    assert correction_method({"datasets": [], "integration": {"method": "linear"}}) is None

    monkeypatch.setattr(run_matrix, "_active_params", {"datasets": two, "integration": {"method": "linear"}})
    pipe = create_pipeline(RunMatrix(folds=(0,), generators=("maf",)))
    assert [n.name for n in pipe.nodes] == ["explain_downstream_skipped"]
    assert pipe.all_outputs() == {"downstream_section"}
    merged = {"name": "merged", "path": "unused.h5ad", "label_key": "unused"}
    section = pipe.nodes[0].func(merged)
    assert 'id="downstream"' in section and "integration.method=linear" in section
    assert "not valid input for marker tests or CellPhoneDB" in explain_downstream_skipped(merged, method="combat")
