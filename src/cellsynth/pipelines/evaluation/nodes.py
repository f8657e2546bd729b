"""Nodes of the ``evaluation`` pipeline: thin adapters over :mod:`cellsynth.evaluation`.

Fold-level nodes (namespace ``fold_<k>``) fit the reference space, split the test cells into the
honest halves, score the real data and draw the PCA figure; generator-level nodes (namespace
``<generator>.fold_<k>``) score one generator's cells; the reporting nodes collect everything into
``metrics.parquet``, tables, figures and the report's evaluation section.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from anndata import AnnData

from cellsynth import evaluation as ev
from cellsynth import provenance
from cellsynth.config import DatasetSettings, EvaluationSettings
from cellsynth.evaluation import gene_figures
from cellsynth.evaluation.report import evaluation_section
from cellsynth.metrics import ReferenceSpace
from cellsynth.reporting.figures import figure_to_image, image_to_png
from cellsynth.reporting.html import Figure, Table
from cellsynth.schema import ALL_TYPES, FLOOR, REAL_ROWS

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- fold level
def fit_reference_space(train: AnnData, evaluation: dict[str, Any]) -> ReferenceSpace:
    """StandardScaler + PCA(``n_pca``, ``seed``) fitted on the fold's real training cells only."""
    settings = EvaluationSettings.from_params(evaluation)
    return ev.fit_reference_space(train, n_components=settings.n_pca, seed=settings.seed)


def split_test_halves(test: AnnData, evaluation: dict[str, Any], *, fold: int) -> pd.DataFrame:
    """The honest halves A/B of the fold's test cells (stratified by cell type, seeded)."""
    return ev.honest_split_frame(test, seed=EvaluationSettings.from_params(evaluation).seed, fold=fold)


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
    frame = ev.real_metrics(train, test, reference_space, honest_split, EvaluationSettings.from_params(evaluation),
                            dataset=provenance.dataset_name(train, dataset), fold=fold)
    floor = frame[(frame["generator"] == FLOOR) & (frame["cell_type"] == ALL_TYPES)].set_index("metric")["value"]
    log.info("fold %d floor (B vs A): WD %.4f, CD %.4f, MMD %.5f, C2ST %.3f", fold, floor.get("wd", float("nan")),
             floor.get("cd", float("nan")), floor.get("mmd", float("nan")), floor.get("c2st_auc", float("nan")))
    return frame


def evaluate_real_fair(train: AnnData, test: AnnData, evaluation: dict[str, Any], dataset: dict[str, Any], *,
                       fold: int) -> pd.DataFrame:
    """The fold's floor under the fair protocol (half B vs half A, repeated with several seeds)."""
    settings = EvaluationSettings.from_params(evaluation)
    if not settings.fair.enabled:
        return ev.long_frame([])
    return ev.fair_metrics(train, test, None, settings, dataset=provenance.dataset_name(train, dataset), fold=fold)


def classify_real_only(
    train: AnnData, test: AnnData, evaluation: dict[str, Any], dataset: dict[str, Any], *, fold: int
) -> pd.DataFrame:
    """Random forest trained on the real training cells alone, scored on the test cells."""
    return ev.utility_metrics(train, test, None, EvaluationSettings.from_params(evaluation),
                              dataset=provenance.dataset_name(train, dataset), fold=fold)


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
    settings = EvaluationSettings.from_params(evaluation)
    fig = ev.plot_reference_pca(
        train, test, dict(zip(generators, synthetic, strict=True)), reference_space, fold=fold,
        seed=settings.seed, max_cells=settings.figures.pca_max_cells, clip_quantile=settings.figures.pca_clip_quantile,
    )
    return figure_to_image(fig, dpi=settings.figures.dpi)


def plot_fold_gene_figures(
    train: AnnData,
    test: AnnData,
    reference_space: ReferenceSpace,
    evaluation: dict[str, Any],
    *synthetic: AnnData,
    generators: tuple[str, ...],
    fold: int,
):
    """Real test vs synthetic cells: UMAP by type and origin, per-gene statistics, within-type correlations."""
    settings = EvaluationSettings.from_params(evaluation)
    cells = dict(zip(generators, synthetic, strict=True))
    figures = (
        gene_figures.plot_umap_real_vs_synthetic(test, cells, reference_space, seed=settings.seed,
                                                 max_cells=settings.figures.umap_max_cells),
        gene_figures.plot_gene_statistics(test, cells),
        gene_figures.plot_gene_correlations(train, test, cells, n_genes=settings.figures.correlation_genes,
                                            min_cells=settings.min_cells_per_type),
    )
    log.info("fold %d: UMAP, gene statistics and correlation figures of %d generators", fold, len(generators))
    return tuple(figure_to_image(fig, dpi=settings.figures.dpi) for fig in figures)


# ----------------------------------------------------------------------------- generator level
def evaluate_synthetic(
    train: AnnData,
    test: AnnData,
    synthetic: AnnData,
    upsample: AnnData,
    reference_space: ReferenceSpace,
    honest_split: pd.DataFrame,
    evaluation: dict[str, Any],
    dataset: dict[str, Any],
    *,
    generator: str,
    fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paper, paper_upsample and honest metrics of one generator on one fold (ratios to the floor are
    added when the rows are collected, so a generator's scoring does not wait for the real rows)."""
    frame, sample = ev.generator_metrics(
        train, test, synthetic, upsample, reference_space, honest_split, None,
        EvaluationSettings.from_params(evaluation), dataset=provenance.dataset_name(train, dataset),
        generator=generator, fold=fold,
    )
    values = frame[frame["cell_type"] == ALL_TYPES].set_index(["protocol", "metric"])["value"]
    log.info("%s fold %d: paper WD %.4f | honest WD %.4f, C2ST %.3f, precision %.2f, recall %.2f, memorisation %.2f",
             generator, fold, *(values.get(k, float("nan")) for k in [
                 ("paper", "wd"), ("honest", "wd"), ("honest", "c2st_auc"),
                 ("honest", "precision"), ("honest", "recall"), ("honest", "memorization")]))
    return frame, sample


def evaluate_synthetic_fair(train: AnnData, test: AnnData, synthetic: AnnData, evaluation: dict[str, Any],
                            dataset: dict[str, Any], *, generator: str, fold: int) -> pd.DataFrame:
    """One generator under the fair protocol: realism, copying, within-type structure (and counts)."""
    settings = EvaluationSettings.from_params(evaluation)
    if not settings.fair.enabled:
        return ev.long_frame([])
    frame = ev.fair_metrics(train, test, synthetic, settings, dataset=provenance.dataset_name(train, dataset),
                            fold=fold, generator=generator)
    values = frame.set_index(["protocol", "metric"])["value"]
    log.info("%s fold %d (fair): detection AUC %.3f, within-type AUC %.3f, correlation r %.3f, memorisation %.2f",
             generator, fold, *(values.get(k, float("nan")) for k in [
                 ("fair", "c2st_auc"), ("within_type", "c2st_auc"), ("within_type", "correlation_r"),
                 ("fair", "memorization")]))
    return frame


def verdict_of_run(real_fair: pd.DataFrame, real_only_utility: pd.DataFrame, fair: pd.DataFrame,
                   utility: pd.DataFrame, evaluation: dict[str, Any]) -> pd.DataFrame:
    """The verdict row of one generator × fold (for its MLflow run; the spread is the repeats')."""
    metrics = pd.concat([real_fair, real_only_utility, fair, utility], ignore_index=True)
    return ev.verdict_table(metrics, EvaluationSettings.from_params(evaluation).verdict)


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
    """Random forest trained on real training + the generator's up-sampling cells."""
    return ev.utility_metrics(train, test, upsample, EvaluationSettings.from_params(evaluation),
                              dataset=provenance.dataset_name(train, dataset), fold=fold, generator=generator)


# ----------------------------------------------------------------------------- reporting
def collect_metrics(*frames: pd.DataFrame) -> pd.DataFrame:
    """All long-format rows of the run in one table (schema checked, ordered by fold), each generator's
    honest rows followed by their ratios to the floor of the same fold and cell type."""
    real = pd.concat([f for f in frames if f["generator"].isin(REAL_ROWS).all()], ignore_index=True)
    frames = tuple(f if f["generator"].isin(REAL_ROWS).all() else ev.add_floor_ratios(f, real) for f in frames)
    metrics = ev.validate_long_frame(pd.concat(frames, ignore_index=True))
    # Stable: within a fold the rows keep the pipeline's order (real rows, then generators as configured).
    return metrics.sort_values("fold", kind="stable", ignore_index=True)


def summarise_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Fold mean, sd and number of folds of every metric."""
    return ev.summarise(metrics)


def make_verdict(metrics: pd.DataFrame, evaluation: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """The verdict table (``verdict.csv``: ✓/✗, number, threshold, detail per question) and its markdown."""
    verdict = ev.verdict_table(metrics, EvaluationSettings.from_params(evaluation).verdict)
    dataset = str(metrics["dataset"].iloc[0]) if len(metrics) else ""
    markdown = ev.to_markdown(ev.verdict_display(verdict), f"Verdict, {dataset}",
                              [ev.verdict_sentence(verdict), *ev.TABLE_NOTES["verdict"], *ev.fit_spread_note(metrics)])
    log.info("verdict:\n%s", markdown)
    return verdict, markdown


def make_tables(metrics: pd.DataFrame, evaluation: dict[str, Any]) -> tuple[
        pd.DataFrame, str, pd.DataFrame, str, pd.DataFrame, str, pd.DataFrame, str, pd.DataFrame, str]:
    """Table 1 (paper), Table 3 (utility), the honest, per-type and fair tables, each as csv + markdown."""
    dataset = str(metrics["dataset"].iloc[0]) if len(metrics) else ""
    min_support = EvaluationSettings.from_params(evaluation).verdict.min_support
    out: list[Any] = []
    for table, title, notes in (
        (ev.paper_table(metrics), f"Table 1: paper protocol, {dataset}", ev.TABLE_NOTES["paper"]),
        (ev.utility_table(metrics, min_support), f"Table 3: up-sampling and classification utility, {dataset}",
         [ev.tables.utility_verdict(metrics), *ev.TABLE_NOTES["utility"]]),
        (ev.honest_table(metrics), f"Honest protocol, {dataset}", ev.TABLE_NOTES["honest"]),
        (ev.per_type_table(metrics), f"Honest protocol per cell type, {dataset}", ev.TABLE_NOTES["per_type"]),
        (ev.fair_table(metrics), f"Fair protocol, {dataset}", [*ev.TABLE_NOTES["fair"], *ev.fit_spread_note(metrics)]),
    ):
        out += [table, ev.to_markdown(table, title, notes)]
    return tuple(out)


def plot_metrics_vs_floor(metrics: pd.DataFrame, evaluation: dict[str, Any]):
    """Bar chart of each honest metric: generators against the floor (an image)."""
    dpi = EvaluationSettings.from_params(evaluation).figures.dpi
    return figure_to_image(ev.plot_metrics_vs_floor(metrics), dpi=dpi)


def plot_training_curves(evaluation: dict[str, Any], *histories: pd.DataFrame):
    """Training (and validation) loss per epoch of every generator and fold (an image)."""
    dpi = EvaluationSettings.from_params(evaluation).figures.dpi
    return figure_to_image(ev.plot_training_curves(histories), dpi=dpi)


def build_evaluation_section(
    metrics: pd.DataFrame,
    verdict: pd.DataFrame,
    paper_table: pd.DataFrame,
    utility_table: pd.DataFrame,
    honest_table: pd.DataFrame,
    per_type_table: pd.DataFrame,
    fair_table: pd.DataFrame,
    metrics_vs_floor,
    training_curves,
    dataset: dict[str, Any],
    *fold_figures,
    folds: tuple[int, ...],
) -> str:
    """The report's evaluation section: the tables, the figures and how to read them.

    ``fold_figures``: the PCA figure of each fold, then the UMAP, gene-statistics and
    gene-correlation figures of each fold (that order, folds in ``folds`` order).
    """
    pca_figures, umaps, gene_stats, correlations = (
        fold_figures[i * len(folds) : (i + 1) * len(folds)] for i in range(4)
    )
    # The dataset the metrics' cells came from (their rows carry it), the parameters only for an empty table.
    name = str(metrics["dataset"].iloc[0]) if len(metrics) else DatasetSettings.from_params(dataset).name
    generators = [g for g in ev.tables.generator_order(metrics["generator"]) if g not in REAL_ROWS]
    published, published_utility = [], []
    if name.lower() == "pbmc3k":
        published = [Table("For comparison: Table 1 as published (PBMC3K)", ev.tables.PUBLISHED_TABLE_1_PBMC3K,
                           ["Turgut Ögme et al. 2025, Table 1 (the paper's own generators and runs)."],
                           "published_table1")]
    if name.lower().startswith("pancreas"):
        published_utility = [Table("For context: the paper's Table 3 as published (its integrated pancreas, "
                                   "5-fold average)", ev.tables.PUBLISHED_TABLE_3_PANCREAS,
                                   ["Turgut Ögme et al. 2025, Table 3 (the paper's own generators, runs and data; "
                                    "real + synthetic rows: training cells plus up-sampled minority types).",
                                    ev.tables.PUBLISHED_PANCREAS_NOTE], "published_table3")]
    utility = ev.tables.utility_verdict(metrics)
    sentence = ev.verdict_sentence(verdict)
    one_fit = ev.fit_spread_note(metrics)
    lead = [Table(f"Verdict ({name})", ev.verdict_display(verdict), [sentence, *ev.TABLE_NOTES["verdict"], *one_fit],
                  "verdict")]
    tables = [
        Table("Fair protocol: realism, structure inside cell types, copying (mean ± spread)", fair_table,
              [*ev.TABLE_NOTES["fair"], *one_fit], "table_fair"),
        Table(f"Table 1: the paper's protocol, as published by the paper ({name})", paper_table,
              ev.TABLE_NOTES["paper"], "table1_paper"),
        *published,
        Table("Honest protocol in the paper's space (fitted on the training cells): against half A, "
              "with ratios to the floor", honest_table, ev.TABLE_NOTES["honest"], "table_honest"),
        Table(f"Table 3: up-sampling and classification utility ({name})", utility_table,
              [utility, *ev.TABLE_NOTES["utility"]], "table3_utility"),
        *published_utility,
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
                 "PCA fitted on the training cells (axes: % of the training variance). Read: red should cover "
                 "blue; PC1/PC2 hold a few % of the variance, so the UMAP below shows more.", f"pca_fold_{k}")
          for k, image in zip(folds, pca_figures, strict=True)),
        *(Figure(title.format(k=k), image_to_png(image), caption, f"{key}_fold_{k}")
          for title, key, caption, images in (
              ("Real vs synthetic cells, UMAP, fold {k}", "umap", gene_figures.CAPTIONS["umap"], umaps),
              ("Per-gene mean, variance and detection rate, fold {k}", "gene_statistics",
               gene_figures.CAPTIONS["gene_statistics"], gene_stats),
              ("Gene–gene correlations within a cell type, fold {k}", "gene_correlations",
               gene_figures.CAPTIONS["gene_correlations"], correlations))
          for k, image in zip(folds, images, strict=True)),
        Figure("Training curves", image_to_png(training_curves),
               "Per-epoch loss from the training histories (generators without epochs are not shown).",
               "training_curves"),
    ]
    summary_lines = [
        f"Folds: {', '.join(str(k) for k in sorted(metrics['fold'].unique()))}",
        f"Generators: {', '.join(generators) or 'none'}",
        f"Metrics rows: {len(metrics)} (data/08_reporting/{name}/metrics.parquet)",
        f"Verdict: {sentence}",
        f"Utility: {utility}",
    ]
    return evaluation_section(name, tables, figures, summary_lines, lead=lead)
