"""A Kedro session runs preprocessing + splitting on a small real subset, and refuses bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import RAW_DATA
from kedro_helpers import base_catalog, run_session


@pytest.fixture(scope="module")
def pbmc_subset():
    full = ad.read_h5ad(RAW_DATA / "pbmc3k_counts.h5ad")
    rng = np.random.default_rng(0)
    return full[np.sort(rng.choice(full.n_obs, 700, replace=False))].copy()


def dataset_params(path, label_key="seurat_annotations"):
    return {"dataset": {"name": "subset", "path": str(path), "label_key": label_key}}


def test_splitting_on_a_real_subset(project, pbmc_subset):
    path = project / "data" / "01_raw" / "subset.h5ad"
    pbmc_subset.write_h5ad(path)
    params = dataset_params(path) | {"splitting": {"n_top_genes": 300}, "folds_to_run": [0, 3]}
    run_session(project, "splitting", params)

    summary = pd.read_csv(project / "data" / "08_reporting" / "subset" / "qc_summary.csv")
    assert summary["dataset"].eq("subset").all()
    folds = pd.read_parquet(project / "data" / "04_feature" / "subset" / "fold_assignments.parquet")
    for k in (0, 3):
        train = ad.read_h5ad(project / "data" / "05_model_input" / "subset" / f"fold_{k}" / "train.h5ad")
        test = ad.read_h5ad(project / "data" / "05_model_input" / "subset" / f"fold_{k}" / "test.h5ad")
        assert train.n_vars == test.n_vars == 300
        assert set(test.obs_names) == set(folds.index[folds["test_fold"] == k])
        assert "counts" in train.layers and train.X.max() < 15  # log-normalised X, counts kept
        share_train = train.obs["cell_type"].value_counts(normalize=True)
        share_test = test.obs["cell_type"].value_counts(normalize=True)
        assert (share_train - share_test).abs().max() < 0.06
    assert not (project / "data" / "05_model_input" / "subset" / "fold_1").exists()
    # The user's file is untouched.
    assert ad.read_h5ad(path).shape == pbmc_subset.shape


def test_bad_input_through_the_own_data_path_stops_with_its_message(project, pbmc_subset):
    path = project / "data" / "01_raw" / "normalised.h5ad"
    bad = pbmc_subset.copy()
    bad.X = sp.csr_matrix(np.log1p(bad.X.toarray()))
    bad.write_h5ad(path)
    with pytest.raises(Exception, match="non-integer values.*raw integer counts") as info:
        run_session(project, "preprocessing", dataset_params(path))
    assert str(path) in str(info.value)
    with pytest.raises(Exception, match=r"no column 'celltype'.*seurat_annotations"):
        run_session(project, "preprocessing", dataset_params(path, label_key="celltype"))


def test_catalog_layers_form_no_cycle_so_kedro_viz_can_draw_layer_bands():
    """kedro-viz orders its layer bands by which layer leads to which, also through a collapsed namespace
    (all it reads counts as leading to all it writes); a cycle makes it drop the bands."""
    import graphlib

    from kedro.io.catalog_config_resolver import CatalogConfigResolver
    from kedro.pipeline import Pipeline

    from cellsynth.pipelines import downstream, evaluation, generation, preprocessing, report, splitting
    from cellsynth.run_matrix import RunMatrix

    config = base_catalog()
    resolver = CatalogConfigResolver(config)

    def layers(names) -> set[str]:
        found = set()
        for name in names:
            entry = config.get(name) or config.get(resolver.match_dataset_pattern(name) or "", {})
            found.add(((entry.get("metadata") or {}).get("kedro-viz") or {}).get("layer"))
        return found - {None}

    matrix = RunMatrix(folds=(0, 1), generators=("maf", "train_copy"))
    analyses = (splitting.create_pipeline(matrix) + generation.create_pipeline(matrix)
                + evaluation.create_pipeline(matrix) + downstream.create_pipeline(matrix, folds=(0,))
                + report.create_pipeline())
    groups = [[node] for node in analyses.nodes]  # every node, then every namespace as one collapsed node
    namespaces = {n.namespace.rsplit(".", depth)[0] for n in analyses.nodes if n.namespace
                  for depth in range(n.namespace.count(".") + 1)}
    groups += [[n for n in analyses.nodes if (n.namespace or "").startswith(ns)] for ns in sorted(namespaces)]
    groups += [[node] for datasets in ([], [{}]) for node in preprocessing.create_pipeline(datasets=datasets).nodes]
    graph: dict[str, set[str]] = {}
    for nodes in groups:
        inside = Pipeline(nodes)
        produced = inside.all_outputs()
        for target in layers(produced):
            graph.setdefault(target, set()).update(layers(inside.all_inputs() - produced) - {target})
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert order.index("model_input") < order.index("models") < order.index("model_output") < order.index("reporting")
