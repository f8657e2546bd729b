"""Every file dataset of the catalog saves atomically: a killed save leaves the previous output whole,
leftovers are cleaned, a truncated output counts as missing, files and folders get the usual modes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cellsynth import datasets as cd
from cellsynth.datasets.atomic import FILE_MODE, FOLDER_MODE
from conftest import PROJECT_ROOT
from kedro_helpers import make_project_copy, run_kedro

FRAME = pd.DataFrame({"a": np.arange(50), "b": np.linspace(0, 1, 50)})
CASES = [
    (cd.ParquetDataset, "t.parquet", FRAME, lambda got: got.equals(FRAME)),
    (cd.CSVDataset, "t.csv", FRAME, lambda got: np.allclose(got.to_numpy(), FRAME.to_numpy())),
    (cd.JSONDataset, "t.json", {"x": [1, 2]}, lambda got: got == {"x": [1, 2]}),
    (cd.TextDataset, "t.html", "<p>hi</p>", lambda got: got == "<p>hi</p>"),
    (cd.PickleDataset, "t.pkl", {"y": 3}, lambda got: got == {"y": 3}),
    (cd.ImageDataset, "t.png", Image.new("RGB", (4, 3), "red"), lambda got: got.size == (4, 3)),
]


@pytest.mark.parametrize(("cls", "name", "data", "same"), CASES, ids=[c[1] for c in CASES])
def test_each_file_dataset_saves_through_a_renamed_partial(tmp_path, cls, name, data, same):
    kwargs = {"save_args": {"index": False}} if cls is cd.CSVDataset else {}
    target = tmp_path / "out" / name
    stale = tmp_path / "out" / f".{name}.999999999-abcd.tmp{target.suffix}"  # a dead writer's partial
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    dataset = cls(filepath=str(target), **kwargs)
    dataset.save(data)
    assert same(dataset.load()) and dataset.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [name]  # no partial left, stale one removed
    assert target.stat().st_mode & 0o777 == FILE_MODE

    target.write_bytes(b"")  # truncated by anything: counts as missing
    assert not dataset.exists()


def test_a_parquet_or_png_cut_short_counts_as_missing(tmp_path):
    parquet = cd.ParquetDataset(filepath=str(tmp_path / "t.parquet"))
    parquet.save(FRAME)
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    assert not parquet.exists()
    png = cd.ImageDataset(filepath=str(tmp_path / "t.png"))
    png.save(Image.new("RGB", (8, 8)))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[:-12])
    assert not png.exists()


def test_model_folders_get_the_usual_folder_mode(tmp_path):
    from cellsynth.generators import GENERATORS
    from conftest import make_log_expression

    model = GENERATORS["train_copy"](label_key="cell_type")
    model.fit(make_log_expression(40, 6, 2, seed=0), seed=0)
    target = tmp_path / "models" / "fold_0"
    cd.GeneratorDataset(path=str(target)).save(model)
    cd.GeneratorDataset(path=str(target)).save(model)  # replaces the previous checkpoint
    assert target.stat().st_mode & 0o777 == FOLDER_MODE
    assert sorted(p.name for p in target.parent.iterdir()) == ["fold_0"]
    assert cd.GeneratorDataset(path=str(target)).load().is_fitted


def test_every_catalog_entry_uses_an_atomic_dataset():
    atomic = {f"cellsynth.datasets.{name}" for name in cd.__all__} - {"cellsynth.datasets.AnnDataCollectionDataset"}
    for path in (PROJECT_ROOT / "conf").glob("*/catalog*.yml"):
        for name, entry in yaml.safe_load(path.read_text()).items():
            if name.startswith("_") or entry.get("type") == "MemoryDataset":
                continue
            if entry["type"] == "cellsynth.datasets.AnnDataCollectionDataset":  # read-only: the user's files
                continue
            assert entry["type"] in atomic, f"{path.name}: {name} is saved by {entry['type']}"


SLOW_SAVE = textwrap.dedent("""
    import os, sys, time
    import pandas as pd
    import pyarrow.parquet
    from cellsynth.datasets import ParquetDataset

    real_write = pyarrow.parquet.write_table
    def slow_write(table, where, **kwargs):  # write half, then stall so the test can kill us mid-save
        where.write(b"PAR1" + b"x" * 1000)
        where.flush()
        print("writing", flush=True)
        time.sleep(60)
    pyarrow.parquet.write_table = slow_write
    ParquetDataset(filepath=sys.argv[1]).save(pd.DataFrame({"a": range(10)}))
""")


def test_kill_9_during_a_parquet_save_leaves_the_previous_file_and_the_output_is_redone(tmp_path):
    root = make_project_copy(tmp_path)
    (root / "data" / "08_reporting").mkdir(parents=True)
    target = root / "data" / "04_feature" / "subset" / "fold_assignments.parquet"
    cd.ParquetDataset(filepath=str(target)).save(FRAME)
    before = target.read_bytes()

    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT / "src"))
    writer = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert target.read_bytes() == before  # the previous file, whole
    leftovers = [p for p in target.parent.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".fold_assignments.parquet.")

    # The partial is no output: a truncated fold_assignments is missing, so --only-missing-outputs redoes it.
    import anndata as ad

    from conftest import RAW_DATA

    full = ad.read_h5ad(RAW_DATA / "pbmc3k_counts.h5ad")
    subset = full[np.random.default_rng(0).choice(full.n_obs, 400, replace=False)].copy()
    subset.write_h5ad(root / "data" / "01_raw" / "subset.h5ad")
    params = "dataset.path=data/01_raw/subset.h5ad,dataset.name=subset,splitting.n_top_genes=200"
    first = run_kedro(root, "run", "--pipelines", "splitting", "--params", params)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not leftovers[0].exists()  # the dead writer's partial was cleaned by the next save
    assignments = pd.read_parquet(target)
    target.write_bytes(target.read_bytes()[:100])  # truncated (e.g. by a save of an older version)
    again = run_kedro(root, "run", "--pipelines", "splitting", "--only-missing-outputs", "--params", params)
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "Running node: split_folds" in output
    assert "Running node: validate_input" not in output  # its output is whole: skipped
    pd.testing.assert_frame_equal(pd.read_parquet(target), assignments)


def test_the_reference_space_round_trips_through_arrays_only(tmp_path, tiny_adata_factory):
    from cellsynth.metrics.space import ReferenceSpace

    adata = tiny_adata_factory(n_cells=120, n_genes=30, n_types=3, seed=2)
    space = ReferenceSpace(n_components=10, seed=0).fit(adata.X)
    space.var_names_ = np.asarray(adata.var_names, dtype=object)  # what the evaluation node attaches
    dataset = cd.ReferenceSpaceDataset(filepath=str(tmp_path / "reference_space.npz"))
    dataset.save(space)
    assert dataset.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["reference_space.npz"]
    np.load(tmp_path / "reference_space.npz", allow_pickle=False)  # nothing in it needs unpickling
    loaded = dataset.load()
    assert isinstance(loaded, ReferenceSpace) and loaded.n_components_ == 10
    np.testing.assert_array_equal(loaded.transform(adata.X), space.transform(adata.X))
    assert loaded.var_names_.dtype == object and list(loaded.var_names_) == list(adata.var_names)


def test_the_reference_space_file_cannot_name_another_class(tmp_path):
    import json

    from kedro.io.core import DatasetError

    meta = {"class": "os.system", "fields": {}}
    with (tmp_path / "evil.npz").open("wb") as handle:
        np.savez(handle, __meta__=np.array(json.dumps(meta)))
    with pytest.raises(DatasetError, match="not an allowed class"):
        cd.ReferenceSpaceDataset(filepath=str(tmp_path / "evil.npz")).load()
