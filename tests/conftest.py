"""Shared fixtures: tiny AnnData objects built in the test, paths to the embedded real data, and a
temporary copy of the Kedro project."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RAW_DATA = PROJECT_ROOT / "data" / "01_raw"


def make_log_expression(n_cells: int, n_genes: int, n_types: int, seed: int) -> AnnData:
    """Log-normalised-like expression with type-specific means and a gene-gene correlation."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_cells) % n_types
    type_means = rng.gamma(2.0, 0.6, size=(n_types, n_genes))
    loadings = rng.normal(0, 0.4, size=(2, n_genes))
    factors = rng.normal(size=(n_cells, 2))
    X = type_means[labels] + factors @ loadings + rng.normal(0, 0.3, size=(n_cells, n_genes))
    X = np.log1p(np.maximum(X, 0) * 3).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type_{i}" for i in labels])},
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)]))


def make_counts(n_cells: int, n_genes: int, n_types: int, seed: int, sparse: bool = True) -> AnnData:
    """Raw UMI-like counts with type-specific programmes, MT- genes, and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_cells) % n_types
    base = rng.gamma(0.6, 1.0, size=(n_types, n_genes))
    lib = rng.integers(800, 3000, size=n_cells)
    rates = base[labels] / base[labels].sum(axis=1, keepdims=True) * lib[:, None]
    counts = rng.poisson(rates).astype(np.float32)
    var_names = [f"MT-{j}" if j < 3 else f"GENE{j}" for j in range(n_genes)]
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type_{i}" for i in labels])},
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    X = sp.csr_matrix(counts) if sparse else counts
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=var_names))


@pytest.fixture(scope="session")
def tiny_adata_factory():
    return make_log_expression


@pytest.fixture(scope="session")
def counts_factory():
    return make_counts


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A copy of the project (``conf/``, ``pyproject.toml``, empty ``data/01_raw``) in ``tmp_path``, as
    the current directory, with its own SQLite MLflow store."""
    from kedro_helpers import make_project_copy

    root = make_project_copy(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return root
