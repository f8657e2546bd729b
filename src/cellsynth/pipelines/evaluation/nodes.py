"""Nodes of the ``evaluation`` pipeline: thin adapters over :mod:`cellsynth.evaluation`.

Fold-level nodes (namespace ``fold_<k>``) fit the reference space, split the test cells into the
honest halves, score the real data and draw the PCA figure; generator-level nodes (namespace
``<generator>.fold_<k>``) score one generator's cells and log the metrics into that generator's
MLflow run; the reporting nodes collect everything into ``metrics.parquet``, tables, figures and
``report.html`` (logged into the ``kedro run``'s parent MLflow run).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from cellsynth import evaluation as ev
from cellsynth import tracking
from cellsynth.evaluation.report import evaluation_section
from cellsynth.metrics import ReferenceSpace
from cellsynth.reporting.figures import figure_to_image, image_to_png
from cellsynth.reporting.html import Figure, Table, page, section_dataset

log = logging.getLogger(__name__)

REPORTING = Path("data/08_reporting")

_MLFLOW_KEY = re.compile(r"[^\w\-. /:]")


# ----------------------------------------------------------------------------- MLflow helpers
def metric_key(protocol: str, metric: str, cell_type: str = ev.protocol.ALL_TYPES, prefix: str = "eval") -> str:
    """MLflow metric name ``eval/<protocol>/<metric>[/<cell type>]`` (characters MLflow refuses → ``_``)."""
    parts = [prefix, protocol, metric] + ([] if cell_type == ev.protocol.ALL_TYPES else [cell_type])
    return _MLFLOW_KEY.sub("_", "/".join(parts))


def _finite_metrics(frame: pd.DataFrame, key=lambda r: metric_key(r.protocol, r.metric, r.cell_type)) -> dict:
    return {key(r): float(r.value) for r in frame.itertuples(index=False) if pd.notna(r.value)
            and abs(float(r.value)) != float("inf")}


def log_to_generator_run(adata: AnnData, frame: pd.DataFrame) -> None:
    """Log ``frame``'s metrics into the generator × fold MLflow run named in ``uns["cellsynth"]``.

    Skipped quietly when tracking is off (no tracking URI in the environment) or the cells carry no
    run id; a run that cannot be reached is reported as a warning, never an error.
    """
    uri = os.environ.get(tracking.TRACKING_URI_ENV)
    run_id = str((adata.uns.get("cellsynth") or {}).get("mlflow_run_id") or "")
    if not (uri and run_id):
        return
    try:
        from mlflow import MlflowClient

        tracking.RunRecorder(MlflowClient(uri), run_id).log_metrics(_finite_metrics(frame))
    except Exception as exc:  # tracking must never break the evaluation
        log.warning("could not log evaluation metrics into MLflow run %s: %s", run_id, exc)


# ----------------------------------------------------------------------------- fold level
def fit_reference_space(train: AnnData, evaluation: dict[str, Any]) -> ReferenceSpace:
    """StandardScaler + PCA(``n_pca``, ``seed``) fitted on the fold's real training cells only."""
    settings = ev.EvaluationSettings.from_params(evaluation)
    return ev.fit_reference_space(train, n_components=settings.n_pca, seed=settings.seed)


def split_test_halves(test: AnnData, evaluation: dict[str, Any], *, fold: int) -> pd.DataFrame:
    """The honest halves A/B of the fold's test cells (stratified by cell type, seeded)."""
    return ev.honest_split_frame(test, seed=ev.EvaluationSettings.from_params(evaluation).seed, fold=fold)


def evaluate_real_data(
    train: AnnData,
    test: AnnData,
    reference_space: ReferenceSpace,
    honest_split: pd.DataFrame,
    evaluation: dict[str, Any],
    dataset: dict[str, Any],
    *,
    fold: int,
) -> pd.DataFrame:
    """The fold's real rows: the paper's "train vs test" and the honest floor (half B vs half A)."""
    settings = ev.EvaluationSettings.from_params(evaluation)
    frame = ev.real_metrics(train, test, reference_space, honest_split, settings,
                            dataset=str(dataset["name"]), fold=fold)
    floor = frame[(frame["generator"] == ev.FLOOR) & (frame["cell_type"] == "all")].set_index("metric")["value"]
    log.info("fold %d floor (B vs A): WD %.4f, CD %.4f, MMD %.5f, C2ST %.3f", fold, floor.get("wd", float("nan")),
             floor.get("cd", float("nan")), floor.get("mmd", float("nan")), floor.get("c2st_auc", float("nan")))
    return frame


def classify_real_only(
    train: AnnData, test: AnnData, evaluation: dict[str, Any], dataset: dict[str, Any], *, fold: int
) -> pd.DataFrame:
    """Random forest trained on the real training cells alone, scored on the test cells."""
    settings = ev.EvaluationSettings.from_params(evaluation)
    return ev.utility_metrics(train, test, None, settings, dataset=str(dataset["name"]), fold=fold)


def plot_fold_pca(
    train: AnnData,
    test: AnnData,
    reference_space: ReferenceSpace,
    evaluation: dict[str, Any],
    *synthetic: AnnData,
    generators: tuple[str, ...],
    fold: int,
):
    """PC1/PC2 scatter of training, test and each generator's cells (the paper's Fig 4), as an image."""
    figures = dict(evaluation.get("figures") or {})
    fig = ev.plot_reference_pca(
        train, test, dict(zip(generators, synthetic, strict=True)), reference_space, fold=fold,
        seed=ev.EvaluationSettings.from_params(evaluation).seed, max_cells=int(figures.get("pca_max_cells", 3000)),
        clip_quantile=float(figures.get("pca_clip_quantile", 0.005)),
    )
    return figure_to_image(fig, dpi=int(figures.get("dpi", 110)))


# ----------------------------------------------------------------------------- generator level
def evaluate_synthetic(
    train: AnnData,
    test: AnnData,
    synthetic: AnnData,
    upsample: AnnData,
    reference_space: ReferenceSpace,
    honest_split: pd.DataFrame,
    real_metrics: pd.DataFrame,
    evaluation: dict[str, Any],
    dataset: dict[str, Any],
    *,
    generator: str,
    fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paper, paper_upsample and honest metrics of one generator on one fold; logged into its MLflow run."""
    settings = ev.EvaluationSettings.from_params(evaluation)
    frame, sample = ev.generator_metrics(
        train, test, synthetic, upsample, reference_space, honest_split, real_metrics, settings,
        dataset=str(dataset["name"]), generator=generator, fold=fold,
    )
    values = frame[frame["cell_type"] == "all"].set_index(["protocol", "metric"])["value"]
    log.info("%s fold %d: paper WD %.4f | honest WD ×%.2f, C2ST %.3f, precision %.2f, recall %.2f, memorisation %.2f",
             generator, fold, *(values.get(k, float("nan")) for k in [
                 ("paper", "wd"), ("honest", "wd_ratio_to_floor"), ("honest", "c2st_auc"),
                 ("honest", "precision"), ("honest", "recall"), ("honest", "memorization")]))
    log_to_generator_run(synthetic, frame)
    return frame, sample


def classify_with_synthetic(
    train: AnnData,
    test: AnnData,
    upsample: AnnData,
    evaluation: dict[str, Any],
    dataset: dict[str, Any],
    *,
    generator: str,
    fold: int,
) -> pd.DataFrame:
    """Random forest trained on real training + the generator's up-sampling cells; logged into its run."""
    settings = ev.EvaluationSettings.from_params(evaluation)
    frame = ev.utility_metrics(train, test, upsample, settings, dataset=str(dataset["name"]), fold=fold,
                               generator=generator)
    log_to_generator_run(upsample, frame)
    return frame


# ----------------------------------------------------------------------------- reporting
def collect_metrics(*frames: pd.DataFrame) -> pd.DataFrame:
    """All long-format rows of the run in one table (schema checked, ordered by fold)."""
    metrics = ev.validate_long_frame(pd.concat(frames, ignore_index=True))
    # Stable: within a fold the rows keep the pipeline's order (real rows, then generators as configured).
    return metrics.sort_values("fold", kind="stable", ignore_index=True)


def summarise_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Fold mean, sd and number of folds of every metric."""
    return ev.summarise(metrics)


def make_tables(metrics: pd.DataFrame) -> tuple[pd.DataFrame, str, pd.DataFrame, str, pd.DataFrame, str,
                                                  pd.DataFrame, str]:
    """Table 1 (paper), Table 3 (utility), the honest table and the per-type table, each as csv + markdown."""
    dataset = str(metrics["dataset"].iloc[0]) if len(metrics) else ""
    out: list[Any] = []
    for table, title, notes in (
        (ev.paper_table(metrics), f"Table 1: paper protocol, {dataset}", ev.TABLE_NOTES["paper"]),
        (ev.utility_table(metrics), f"Table 3: up-sampling and classification utility, {dataset}",
         [ev.tables.utility_verdict(metrics), *ev.TABLE_NOTES["utility"]]),
        (ev.honest_table(metrics), f"Honest protocol, {dataset}", ev.TABLE_NOTES["honest"]),
        (ev.per_type_table(metrics), f"Honest protocol per cell type, {dataset}", ev.TABLE_NOTES["per_type"]),
    ):
        out += [table, ev.to_markdown(table, title, notes)]
    return tuple(out)


def plot_metrics_vs_floor(metrics: pd.DataFrame, evaluation: dict[str, Any]):
    """Bar chart of each honest metric: generators against the floor (an image)."""
    dpi = int((evaluation.get("figures") or {}).get("dpi", 110))
    return figure_to_image(ev.plot_metrics_vs_floor(metrics), dpi=dpi)


def plot_training_curves(evaluation: dict[str, Any], *histories: pd.DataFrame):
    """Training (and validation) loss per epoch of every generator and fold (an image)."""
    dpi = int((evaluation.get("figures") or {}).get("dpi", 110))
    return figure_to_image(ev.plot_training_curves(histories), dpi=dpi)


def _report_parameters(parameters: Mapping[str, Any], generators: list[str]) -> dict[str, Any]:
    keys = ("dataset", "folds_to_run", "preprocessing", "splitting", "generation", "evaluation")
    shown = {k: parameters[k] for k in keys if k in parameters}
    presets = parameters.get("generator_presets") or {}
    if presets:
        shown["generator_presets"] = {g: presets[g] for g in generators if g in presets}
    return shown


def build_report(
    metrics: pd.DataFrame,
    paper_table: pd.DataFrame,
    utility_table: pd.DataFrame,
    honest_table: pd.DataFrame,
    per_type_table: pd.DataFrame,
    metrics_vs_floor,
    training_curves,
    parameters: dict[str, Any],
    *pca_figures,
    folds: tuple[int, ...],
) -> str:
    """The self-contained HTML report; it and the tables and figures are logged into the parent MLflow run."""
    dataset = str(metrics["dataset"].iloc[0]) if len(metrics) else str((parameters.get("dataset") or {}).get("name"))
    generators = [g for g in ev.tables.generator_order(metrics["generator"]) if g not in ev.protocol.REAL_GENERATORS]
    published = []
    if dataset.lower() == "pbmc3k":
        published = [Table("For comparison: Table 1 as published (PBMC3K)", ev.tables.PUBLISHED_TABLE_1_PBMC3K,
                           ["Turgut Ögme et al. 2025, Table 1 (the paper's own generators and runs)."],
                           "published_table1")]
    verdict = ev.tables.utility_verdict(metrics)
    tables = [
        Table(f"Table 1: the paper's protocol ({dataset})", paper_table, ev.TABLE_NOTES["paper"], "table1_paper"),
        *published,
        Table("Honest protocol: against half A, with ratios to the floor", honest_table,
              ev.TABLE_NOTES["honest"], "table_honest"),
        Table(f"Table 3: up-sampling and classification utility ({dataset})", utility_table,
              [verdict, *ev.TABLE_NOTES["utility"]], "table3_utility"),
        Table("Honest protocol per cell type", per_type_table, ev.TABLE_NOTES["per_type"], "table_per_type",
              label_columns=2),
        Table("Generator runs", ev.run_table(metrics),
              ["Fit and sampling time (s), epochs and peak memory (GiB) from the generation runs."], "table_runs"),
    ]
    figures = [
        Figure("Honest metrics against the floor", image_to_png(metrics_vs_floor),
               "Bars: fold mean (± sd) of each generator; red dashed line: the real floor (B vs A).",
               "metrics_vs_floor"),
        *(Figure(f"Reference space, fold {k} (the paper's Fig 4)", image_to_png(image),
                 "Grey: training cells, blue: test cells, red: the generator's cells; PC1/PC2 of the "
                 "PCA fitted on the training cells.", f"pca_fold_{k}")
          for k, image in zip(folds, pca_figures, strict=True)),
        Figure("Training curves", image_to_png(training_curves),
               "Per-epoch loss from the training histories (generators without epochs are not shown).",
               "training_curves"),
    ]
    summary_lines = [
        f"Folds: {', '.join(str(k) for k in sorted(metrics['fold'].unique()))}",
        f"Generators: {', '.join(generators) or 'none'}",
        f"Metrics rows: {len(metrics)} (data/08_reporting/metrics.parquet)",
        f"Utility: {verdict}",
    ]
    sections = [evaluation_section(dataset, tables, figures, summary_lines), *_optional_sections(dataset)]
    text = page(title=f"cellsynth evaluation: {dataset}", sections=sections,
                parameters=_report_parameters(parameters, generators))
    _log_to_parent_run(metrics, tables, figures, text)
    return text


def _optional_sections(dataset: str) -> list[str]:
    """Report sections other pipelines wrote for this dataset (integration, downstream), if any.

    They are read from ``data/08_reporting`` rather than wired as node inputs so that
    ``kedro run --pipelines evaluation`` also works when those pipelines have not run; a section
    of another dataset (a leftover of an earlier run) is skipped. Run ``downstream`` before
    ``evaluation`` to include its section.
    """
    sections = []
    for name in ("integration_section.html", "downstream_section.html"):
        path = REPORTING / name
        if path.is_file():
            section = path.read_text(encoding="utf-8")
            if section_dataset(section) in (dataset, None):
                sections.append(section)
            else:
                log.info("report: skipping %s (written for another dataset)", path)
    return sections


def _log_to_parent_run(metrics: pd.DataFrame, tables: list[Table], figures: list[Figure],
                       report_html: str) -> None:
    recorder = tracking.parent_recorder()
    if not recorder.run_id:
        return
    try:
        overall = metrics[metrics["cell_type"] == "all"]
        for fold, part in overall.groupby("fold"):
            recorder.log_metrics(
                _finite_metrics(part, key=lambda r: metric_key(r.protocol, r.metric, prefix=f"eval/{r.generator}")),
                step=int(fold),
            )
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "report.html").write_text(report_html, encoding="utf-8")
            metrics.to_parquet(root / "metrics.parquet", index=False)
            for i, item in enumerate(tables):
                stem = item.anchor or f"table_{i}"
                item.frame.to_csv(root / f"{stem}.csv", index=False)
                (root / f"{stem}.md").write_text(ev.to_markdown(item.frame, item.title, item.notes), encoding="utf-8")
            for i, item in enumerate(figures):
                (root / f"{item.name or f'figure_{i}'}.png").write_bytes(item.png)
            recorder.log_artifacts(root, artifact_path="evaluation")
    except Exception as exc:  # tracking must never break the evaluation
        log.warning("could not log the evaluation report into the parent MLflow run: %s", exc)
