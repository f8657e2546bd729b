"""MLflow artifact locations are relative to the store: a project moved with its ``mlflow.db`` and
``mlartifacts/`` still reads its artifacts, where ``mlflow ui`` started beside the store serves them."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.server.handlers import _get_proxied_run_artifact_destination_path

from cellsynth.tracking import runs


def test_artifacts_are_filed_beside_the_store_and_move_with_it(tmp_path):
    first = tmp_path / "project"
    first.mkdir()
    (first / "report.html").write_text("<html/>")
    (first / "model").mkdir()
    (first / "model" / "weights.pt").write_bytes(b"\x00\x01")
    run = runs.start_parent_run(tracking_uri=f"sqlite:///{first / 'mlflow.db'}", experiment="cellsynth-moved",
                                run_name="r", params={}, tags={})
    try:
        runs.log_artifact(run.run_id, first / "report.html", "report")
        runs.log_artifact(run.run_id, first / "model", "checkpoint")
    finally:
        runs.end_parent_run()

    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    first.rename(moved)
    client = MlflowClient(tracking_uri=f"sqlite:///{moved / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cellsynth-moved")
    assert experiment.artifact_location == "mlflow-artifacts:/cellsynth-moved"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    folder = runs.proxied_artifacts_folder(client, run.run_id)
    assert folder == moved / "mlartifacts" / "cellsynth-moved" / run.run_id / "artifacts"
    assert (folder / "report" / "report.html").read_text() == "<html/>"
    assert (folder / "checkpoint" / "weights.pt").read_bytes() == b"\x00\x01"
    # the folder `mlflow ui --artifacts-destination ./mlartifacts` reads for this run is the same one
    served = _get_proxied_run_artifact_destination_path(client.get_run(run.run_id).info.artifact_uri)
    assert moved / "mlartifacts" / served == folder


def test_only_a_sqlite_store_gets_a_location_of_cellsynth():
    assert runs.experiment_artifact_location("sqlite:////p/mlflow.db", "cellsynth-a b") == "mlflow-artifacts:/cellsynth-a%20b"
    assert runs.artifacts_root("sqlite:////p/mlflow.db").as_posix() == "/p/mlartifacts"
    # a tracking server chooses where its artifacts go (its --artifacts-destination)
    assert runs.experiment_artifact_location("http://127.0.0.1:5000", "cellsynth-a") is None
    assert runs.artifacts_root("http://127.0.0.1:5000") is None
