"""The closing summary of a ``kedro run``: report, models, MLflow command and the next pipeline."""

from __future__ import annotations

import logging
from pathlib import Path

from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node
from kedro_datasets.text import TextDataset

from cellsynth.summary import RunSummaryHook, closing_summary, next_step


def test_next_step_follows_the_pipelines_in_order():
    assert next_step(["generation"], "local").startswith("kedro run --pipelines evaluation ")
    assert next_step(["splitting", "generation"], None).startswith("kedro run --pipelines evaluation")
    assert "--pipelines downstream --env zheng17" in next_step(["evaluation"], "zheng17")
    assert next_step(["downstream"], None) is None
    assert next_step(["__default__"], None) is None


def test_summary_names_report_models_mlflow_and_next(tmp_path):
    report = tmp_path / "report.html"
    text = closing_summary(pipeline_names=["generation"], env=None, report=report, report_written=False,
                           experiment="cellsynth-pbmc3k", tracking_uri="sqlite:///mlflow.db")
    assert "report" not in text.split("models")[0]  # no report yet: not named
    assert "python -m cellsynth sample" in text and "make mlflow" in text and "cellsynth-pbmc3k" in text
    text = closing_summary(pipeline_names=["generation"], env=None, report=None, report_written=False,
                           experiment="cellsynth-pbmc3k", tracking_uri="sqlite:///mlflow.db", experiment_id="7")
    # MLflow 3.17 opens an experiment on its GenAI view unless the address asks for model training
    assert "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning" in text
    report.write_text("<html></html>")
    text = closing_summary(pipeline_names=["evaluation"], env=None, report=report, report_written=True,
                           experiment=None, tracking_uri=None)
    assert f"report:  {report}" in text and "MLflow" not in text and "--pipelines downstream" in text


def test_hook_logs_after_the_pipeline(tmp_path, caplog):
    report = tmp_path / "report.html"
    catalog = DataCatalog({"report": TextDataset(filepath=str(report)), "x": MemoryDataset(1)})
    pipeline = Pipeline([node(lambda x: "<html/>", "x", "report", name="build_report")])
    hook = RunSummaryHook()
    hook._params = {"tracking": {"enabled": False}, "dataset": {"name": "pbmc3k"}}
    with caplog.at_level(logging.INFO, logger="cellsynth.summary"):
        hook.after_pipeline_run({"pipeline_names": ["evaluation"], "env": None}, pipeline, catalog)
    (message,) = [r.getMessage() for r in caplog.records if r.name == "cellsynth.summary"]
    assert str(Path(report)) in message and "kedro run --pipelines downstream" in message


def test_hook_links_the_runs_table_of_the_experiment_in_the_project_store(tmp_path, caplog, monkeypatch):
    from cellsynth.tracking import runs

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    catalog = DataCatalog({"x": MemoryDataset(1)})
    pipeline = Pipeline([node(lambda x: x, "x", "y", name="copy")])
    hook = RunSummaryHook()
    hook._params = {"tracking": {"enabled": True, "tracking_uri": "sqlite:///mlflow.db"}, "dataset": {"name": "tiny"}}
    hook._project_path = tmp_path
    with caplog.at_level(logging.INFO, logger="cellsynth.summary"):
        hook.after_pipeline_run({"pipeline_names": ["generation"], "env": None}, pipeline, catalog)
    assert not (tmp_path / "mlflow.db").exists()  # no store yet: the summary does not create one
    assert "> Model training > cellsynth-tiny" in caplog.records[-1].getMessage()

    run = runs.start_parent_run(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="cellsynth-tiny",
                                run_name="r", params={}, tags={})
    runs.end_parent_run()
    with caplog.at_level(logging.INFO, logger="cellsynth.summary"):
        hook.after_pipeline_run({"pipeline_names": ["generation"], "env": None}, pipeline, catalog)
    assert f"/#/experiments/{run.experiment_id}/runs?workflowType=machine_learning" in caplog.records[-1].getMessage()
