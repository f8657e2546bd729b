"""The catalog's AnnData dataset round-trips, versions, and never leaves a partial file."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.io.core import DatasetError, Version

from cellsynth.datasets import AnnDataDataset


def test_round_trip(tmp_path, tiny_adata_factory):
    adata = tiny_adata_factory(20, 5, 2, seed=0)
    ds = AnnDataDataset(filepath=str(tmp_path / "sub" / "a.h5ad"))
    assert not ds.exists()
    ds.save(adata)
    assert ds.exists()
    loaded = ds.load()
    np.testing.assert_array_equal(loaded.X, adata.X)
    assert loaded.obs["cell_type"].tolist() == adata.obs["cell_type"].tolist()


def test_interrupted_save_keeps_the_old_file_and_leaves_no_partial(tmp_path, tiny_adata_factory, monkeypatch):
    adata = tiny_adata_factory(20, 5, 2, seed=0)
    target = tmp_path / "a.h5ad"
    ds = AnnDataDataset(filepath=str(target))
    ds.save(adata)
    before = target.read_bytes()

    def crash(self, filename, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(adata), "write_h5ad", crash)
    with pytest.raises(KeyboardInterrupt):
        ds.save(adata)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5ad"]


def test_versioned(tmp_path, tiny_adata_factory):
    adata = tiny_adata_factory(10, 4, 2, seed=0)
    ds = AnnDataDataset(filepath=str(tmp_path / "v.h5ad"), version=Version(None, "2026-01-01T00.00.00.000Z"))
    ds.save(adata)
    assert (tmp_path / "v.h5ad" / "2026-01-01T00.00.00.000Z" / "v.h5ad").is_file()
    reader = AnnDataDataset(filepath=str(tmp_path / "v.h5ad"), version=Version(None, None))
    assert reader.load().n_obs == 10


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="No .h5ad file"):
        AnnDataDataset(filepath=str(tmp_path / "nope.h5ad")).load()


def test_the_datasets_list_is_read_through_the_catalog_and_never_written(tmp_path, counts_factory):
    from cellsynth.datasets import AnnDataCollectionDataset

    counts_factory(30, 12, 2, seed=0).write_h5ad(tmp_path / "a.h5ad")
    entries = [{"name": "a", "path": str(tmp_path / "a.h5ad"), "label_key": "cell_type"},
               {"name": "b", "path": str(tmp_path / "missing.h5ad"), "label_key": "cell_type"}]
    assert AnnDataCollectionDataset(datasets=entries[:1]).load()["a"].shape == (30, 12)
    assert AnnDataCollectionDataset(datasets=[]).load() == {}
    with pytest.raises(DatasetError, match=r"dataset 'b' \(.*missing.h5ad\): no such file. Fix its path"):
        AnnDataCollectionDataset(datasets=entries).load()
    with pytest.raises(DatasetError, match="never writes them"):
        AnnDataCollectionDataset(datasets=entries[:1]).save({})
