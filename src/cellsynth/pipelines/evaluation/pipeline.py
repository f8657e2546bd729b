from kedro.pipeline import Pipeline, node, pipeline

from cellsynth.pipelines._binding import bind
from cellsynth.pipelines.evaluation.nodes import (
    build_evaluation_section,
    classify_real_only,
    classify_with_synthetic,
    collect_metrics,
    evaluate_real_data,
    evaluate_real_fair,
    evaluate_synthetic,
    evaluate_synthetic_fair,
    fit_reference_space,
    make_tables,
    make_verdict,
    plot_fold_gene_figures,
    plot_fold_pca,
    plot_metrics_vs_floor,
    plot_training_curves,
    split_test_halves,
    summarise_metrics,
    verdict_of_run,
)
from cellsynth.run_matrix import RunMatrix

PARAMS = {"params:evaluation", "params:dataset"}


def _fold_pipeline(k: int) -> Pipeline:
    return pipeline(
        [
            node(fit_reference_space, ["train", "params:evaluation"], "reference_space", name="fit_reference_space"),
            node(bind(split_test_halves, fold=k), ["test", "params:evaluation"], "honest_split",
                 name="split_test_halves"),
            node(
                bind(evaluate_real_data, fold=k),
                ["train", "test", "reference_space", "honest_split", "params:evaluation", "params:dataset"],
                "real_metrics",
                name="evaluate_real_data",
            ),
            node(bind(classify_real_only, fold=k), ["train", "test", "params:evaluation", "params:dataset"],
                 "real_only_utility", name="classify_real_only"),
            node(bind(evaluate_real_fair, fold=k), ["train", "test", "params:evaluation", "params:dataset"],
                 "real_fair_metrics", name="evaluate_real_fair"),
        ],
        namespace=f"fold_{k}",
        parameters=PARAMS,
    )


def _pca_figure_node(k: int, generators: tuple[str, ...]):
    """Reporting node (outside ``fold_<k>``: it follows the generator namespaces, which would split it)."""
    return node(
        bind(plot_fold_pca, generators=tuple(generators), fold=k),
        [f"fold_{k}.train", f"fold_{k}.test", f"fold_{k}.reference_space", "params:evaluation",
         *[f"{g}.fold_{k}.synthetic" for g in generators]],
        f"fold_{k}.pca_figure",
        name=f"plot_reference_pca_fold_{k}",
    )


def _verdict_node(name: str, k: int):
    """The verdict row of one generator × fold. Outside the namespace ``<name>.fold_<k>``: it reads the
    fold's real rows (model output), which would make that namespace, collapsed in kedro-viz, lead from
    model output back to models. Its output keeps the namespace's name, so it lands in that MLflow run."""
    return node(
        verdict_of_run,
        [f"fold_{k}.real_fair_metrics", f"fold_{k}.real_only_utility", f"{name}.fold_{k}.fair_metrics",
         f"{name}.fold_{k}.utility_metrics", "params:evaluation"],
        f"{name}.fold_{k}.verdict",
        name=f"verdict_of_run_{name}_fold_{k}",
    )


#: The fold-level figures of real test vs synthetic cells (catalog ``fold_<k>.<name>``).
GENE_FIGURES = ("umap_figure", "gene_statistics_figure", "gene_correlation_figure")


def _gene_figures_node(k: int, generators: tuple[str, ...]):
    """Reporting node, outside ``fold_<k>`` for the same reason as :func:`_pca_figure_node`."""
    return node(
        bind(plot_fold_gene_figures, generators=tuple(generators), fold=k),
        [f"fold_{k}.train", f"fold_{k}.test", f"fold_{k}.reference_space", "params:evaluation",
         *[f"{g}.fold_{k}.synthetic" for g in generators]],
        [f"fold_{k}.{name}" for name in GENE_FIGURES],
        name=f"plot_gene_figures_fold_{k}",
    )


def _generator_pipeline(name: str, k: int) -> Pipeline:
    fold_level = {"train", "test", "reference_space", "honest_split"}
    return pipeline(
        [
            node(
                bind(evaluate_synthetic, generator=name, fold=k),
                ["train", "test", "synthetic", "upsample", "reference_space", "honest_split",
                 "params:evaluation", "params:dataset"],
                ["distribution_metrics", "honest_sample"],
                name="evaluate_synthetic",
            ),
            node(
                bind(classify_with_synthetic, generator=name, fold=k),
                ["train", "test", "upsample", "params:evaluation", "params:dataset"],
                "utility_metrics",
                name="classify_with_synthetic",
            ),
            node(
                bind(evaluate_synthetic_fair, generator=name, fold=k),
                ["train", "test", "synthetic", "params:evaluation", "params:dataset"],
                "fair_metrics",
                name="evaluate_synthetic_fair",
            ),
        ],
        namespace=f"{name}.fold_{k}",
        inputs={dataset: f"fold_{k}.{dataset}" for dataset in fold_level},
        parameters=PARAMS,
    )


def create_pipeline(matrix: RunMatrix, **kwargs) -> Pipeline:
    """Evaluate every generator × fold of ``matrix`` and report.

    * ``fold_<k>``: ``fit_reference_space`` (``fold_<k>.reference_space``), ``split_test_halves``
      (``fold_<k>.honest_split``), ``evaluate_real_data`` (``fold_<k>.real_metrics``: paper "train vs
      test" and the honest floor), ``classify_real_only`` and ``evaluate_real_fair`` (the fair floor);
    * ``<generator>.fold_<k>``: ``evaluate_synthetic`` (paper, paper_upsample, honest; the ratios to
      the floor are added by ``collect_metrics``) and
      ``classify_with_synthetic`` (random forest on real + up-sampling cells), ``evaluate_synthetic_fair``
      (fair protocol); ``verdict_of_run_<generator>_fold_<k>`` writes ``<generator>.fold_<k>.verdict``
      (the verdict row logged to the generator × fold run);
    * reporting: ``collect_metrics`` (``data/08_reporting/<dataset>/metrics.parquet``), ``summarise_metrics``,
      ``make_tables``, ``make_verdict`` (``verdict.csv``), the figures (``plot_reference_pca_fold_<k>`` draws ``fold_<k>.pca_figure``) and
      ``build_evaluation_section`` (the report's evaluation section; the ``report`` pipeline assembles
      ``report.html``).

    Reads what the generation pipeline saved; ``kedro run --pipeline evaluation --namespaces maf.fold_0``
    re-scores one generator (the fold-level outputs must exist).
    """
    folds, generators = tuple(matrix.folds), tuple(matrix.generators)
    per_fold = sum((_fold_pipeline(k) for k in folds), Pipeline([]))
    per_generator = sum((_generator_pipeline(g, k) for g in generators for k in folds), Pipeline([]))

    frames = [f"fold_{k}.{name}" for k in folds for name in ("real_metrics", "real_only_utility", "real_fair_metrics")]
    frames += [f"{g}.fold_{k}.{name}" for g in generators for k in folds
               for name in ("distribution_metrics", "utility_metrics", "fair_metrics")]
    histories = [f"{g}.fold_{k}.training_history" for g in generators for k in folds]
    tables = ["evaluation_table_paper", "evaluation_table_paper_md", "evaluation_table_utility",
              "evaluation_table_utility_md", "evaluation_table_honest", "evaluation_table_honest_md",
              "evaluation_table_per_type", "evaluation_table_per_type_md", "evaluation_table_fair",
              "evaluation_table_fair_md"]
    reporting = pipeline(
        [
            node(collect_metrics, frames, "evaluation_metrics", name="collect_metrics"),
            *(_pca_figure_node(k, generators) for k in folds),
            *(_verdict_node(g, k) for g in generators for k in folds),
            *(_gene_figures_node(k, generators) for k in folds),
            node(summarise_metrics, "evaluation_metrics", "evaluation_summary", name="summarise_metrics"),
            node(make_tables, ["evaluation_metrics", "params:evaluation"], tables, name="make_tables"),
            node(make_verdict, ["evaluation_metrics", "params:evaluation"], ["verdict", "verdict_md"],
                 name="make_verdict"),
            node(plot_metrics_vs_floor, ["evaluation_metrics", "params:evaluation"], "metrics_vs_floor_figure",
                 name="plot_metrics_vs_floor"),
            node(plot_training_curves, ["params:evaluation", *histories], "training_curves_figure",
                 name="plot_training_curves"),
            node(
                bind(build_evaluation_section, folds=folds),
                ["evaluation_metrics", "verdict", *tables[0::2], "metrics_vs_floor_figure", "training_curves_figure",
                 "params:dataset", *[f"fold_{k}.pca_figure" for k in folds],
                 *[f"fold_{k}.{name}" for name in GENE_FIGURES for k in folds]],
                "evaluation_section",
                name="build_evaluation_section",
            ),
        ]
    )
    return per_fold + per_generator + reporting
