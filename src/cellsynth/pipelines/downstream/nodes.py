"""Nodes of the ``downstream`` pipeline: thin adapters over :mod:`cellsynth.downstream`.

Fold level (namespace ``fold_<k>``): markers of the real cells (S1 Table, Fig 5, textbook check),
marker rankings and CellPhoneDB interactions of the test and the real training cells, and the real
"train vs test" comparison. Generator level (namespace ``<generator>.fold_<k>``): the same on the
generator's cells (synthetic only, and real training + synthetic), scored against the test cells.
Reporting: heatmaps (Fig 6) and dot plot (Fig 7) per fold, the ``marker_preservation`` and
``interactions_rmse`` tables, and the report's downstream section.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pandas as pd
from anndata import AnnData

from cellsynth import downstream as ds
from cellsynth import provenance
from cellsynth.config import DatasetSettings, DownstreamSettings, InteractionSettings, MarkerSettings
from cellsynth.data.organism import interaction_resource
from cellsynth.downstream import figures
from cellsynth.downstream.report import (
    PUBLISHED_TABLE_4_PANCREAS,
    REAL_PLUS_SYNTHETIC,
    REAL_TRAIN_VS_TEST,
    REAL_TRAINING,
    SECTION_ID,
    SECTION_TITLE,
    SYNTHETIC_ONLY,
    downstream_section,
    interaction_summary,
    preservation_summary,
)
from cellsynth.evaluation.tables import PUBLISHED_PANCREAS_NOTE
from cellsynth.reporting.figures import figure_to_image, image_to_png
from cellsynth.reporting.html import Figure, Table, missing_section
from cellsynth.schema import ALL_TYPES, LABEL_KEY

log = logging.getLogger(__name__)

TEST_CELLS = "test cells"


# ----------------------------------------------------------------------------- helpers
def _rank(cells: AnnData, markers: MarkerSettings, name: str) -> pd.DataFrame:
    start = time.perf_counter()
    ranking = ds.rank_markers(cells, label_key=LABEL_KEY, method=markers.method, min_cells=markers.min_cells,
                              name=name)
    log.info("%s: marker genes ranked in %.1f s (%d cells × %d genes)", name, time.perf_counter() - start,
             cells.n_obs, cells.n_vars)
    return ranking


def _for_cells(downstream: dict[str, Any], cells: AnnData) -> DownstreamSettings:
    """The settings with ``interactions.resource_name: auto`` resolved to the organism of ``cells``
    (``uns["organism"]``, written by preprocessing; human when absent)."""
    settings = DownstreamSettings.from_params(downstream)
    organism = (cells.uns.get("organism") or {}).get("name")
    resource = interaction_resource(settings.interactions.resource_name, organism)
    return dataclasses.replace(settings, interactions=dataclasses.replace(settings.interactions, resource_name=resource))


def _interactions(cells: AnnData, i: InteractionSettings, name: str) -> pd.DataFrame:
    start = time.perf_counter()
    table = ds.infer_interactions(
        cells, label_key=LABEL_KEY, resource_name=i.resource_name, expr_prop=i.expr_prop, min_cells=i.min_cells,
        n_perms=i.n_perms, seed=i.seed, alpha=i.alpha, n_jobs=i.n_jobs, name=name,
    )
    log.info("%s: CellPhoneDB (LIANA) on %d cells in %.1f s: %d pairs, %d significant", name, cells.n_obs,
             time.perf_counter() - start, len(table), int(table["significant"].sum()))
    return table


# ----------------------------------------------------------------------------- fold level
def real_cell_markers(
    train: AnnData, test: AnnData, downstream: dict[str, Any], dataset: dict[str, Any], *, fold: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, Any]:
    """Marker genes of the fold's real cells (training + test, as the paper), on its HVGs.

    Returns
    -------
    tuple
        The full ranking, the top markers per type (``unique`` flags the mutually exclusive ones),
        the candidate markers (S1 Table: mutually exclusive, with adjusted p and log2FC), the
        textbook-marker check (empty when ``downstream.markers.expected`` has no entry for
        ``dataset.name``) and the violin plots of each type's most significant candidate marker (Fig 5).
    """
    settings = DownstreamSettings.from_params(downstream)
    real = ds.combine_cells([("train", train), ("test", test)], LABEL_KEY)
    ranking = _rank(real, settings.markers, f"fold {fold} real cells (train + test)")
    top = ds.top_markers(ranking, **settings.markers.selection())
    candidates = ds.candidate_markers(top)
    expected = settings.markers.expected.get(provenance.dataset_name(train, dataset)) or {}
    check = ds.check_expected_markers(top, expected, genes=list(real.var_names),
                                      cell_types=sorted(set(ranking["cell_type"])))
    if len(check):
        missing = sorted(set(check.loc[~check["type_ok"], "cell_type"]))
        if missing:
            log.warning("fold %d: no textbook marker among the markers of %s", fold, ", ".join(missing))
    genes = ds.top_unique_markers(top)
    fig = figures.plot_marker_violins(
        genes, real, label_key=LABEL_KEY,
        title=f"Fold {fold}: most significant mutually exclusive marker of each cell type, real cells (train + test)")
    return ranking, top, candidates, check, figure_to_image(fig, dpi=settings.figures.dpi)


def reference_markers(train: AnnData, test: AnnData, downstream: dict[str, Any], *, fold: int
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Marker rankings of the test cells (the reference) and of the real training cells."""
    markers = DownstreamSettings.from_params(downstream).markers
    return _rank(test, markers, f"fold {fold} test cells"), _rank(train, markers, f"fold {fold} training cells")


def reference_interactions(train: AnnData, test: AnnData, downstream: dict[str, Any], *, fold: int
                           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CellPhoneDB interactions of the test cells (the reference) and of the real training cells."""
    i = _for_cells(downstream, train).interactions
    return _interactions(test, i, f"fold {fold} test cells"), _interactions(train, i, f"fold {fold} training cells")


def _preservation_rows(reference: pd.DataFrame, other: pd.DataFrame, markers: MarkerSettings, *, fold: int,
                       generator: str, compared: str) -> pd.DataFrame:
    per_type = ds.marker_preservation(reference, other, **markers.selection())
    summary = ds.summarise_preservation(per_type)
    overall = pd.DataFrame([{"cell_type": ALL_TYPES, **{k: v for k, v in summary.items() if k != "n_types"},
                             "n_reference": per_type["n_reference"].sum(), "n_other": per_type["n_other"].sum(),
                             "n_shared": per_type["n_shared"].sum(), "n_de_genes": per_type["n_de_genes"].sum(),
                             "n_types": summary["n_types"]}])
    frame = pd.concat([per_type.assign(n_types=1.0), overall], ignore_index=True)
    frame.insert(0, "compared", compared)
    frame.insert(0, "generator", generator)
    frame.insert(0, "fold", int(fold))
    return frame


def _comparison_row(reference: pd.DataFrame, other: pd.DataFrame, i: InteractionSettings, *, fold: int,
                    generator: str, cells: str, n_cells: int) -> dict[str, Any]:
    return {"fold": int(fold), "generator": generator, "cells": cells, "n_cells": int(n_cells),
            **ds.compare_interactions(reference, other), "resource": i.resource_name, "n_perms": i.n_perms}


def real_train_vs_test(
    test_ranking: pd.DataFrame, train_ranking: pd.DataFrame, test_interactions: pd.DataFrame,
    train_interactions: pd.DataFrame, train: AnnData, downstream: dict[str, Any], *, fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The real reference rows: training cells against the test cells (markers and interactions)."""
    settings = _for_cells(downstream, train)
    markers = _preservation_rows(test_ranking, train_ranking, settings.markers, fold=fold,
                                 generator=REAL_TRAIN_VS_TEST, compared=REAL_TRAINING)
    comparison = pd.DataFrame([_comparison_row(test_interactions, train_interactions, settings.interactions, fold=fold,
                                               generator=REAL_TRAIN_VS_TEST, cells=REAL_TRAINING,
                                               n_cells=train.n_obs)])
    return markers, comparison


# ----------------------------------------------------------------------------- generator level
def synthetic_markers(
    synthetic: AnnData, test: AnnData, real_top_markers: pd.DataFrame, downstream: dict[str, Any], *,
    generator: str, fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """Marker genes of the generator's (matched) synthetic cells.

    Returns the ranking, the generator's own candidate markers (mutually exclusive, as for the real
    cells) and violin plots of the real cells' top candidate markers, test cells (blue) next to the
    synthetic cells (red).
    """
    if not synthetic.var_names.equals(test.var_names):
        raise ValueError(f"{generator} fold {fold}: synthetic cells do not have the fold's genes")
    settings = DownstreamSettings.from_params(downstream)
    ranking = _rank(synthetic, settings.markers, f"{generator} fold {fold} synthetic cells")
    candidates = ds.candidate_markers(ds.top_markers(ranking, **settings.markers.selection()))
    genes = ds.top_unique_markers(real_top_markers)
    fig = figures.plot_marker_violins(
        genes, test, synthetic, label_key=LABEL_KEY, real_name="test cells", synthetic_name=f"{generator} cells",
        title=f"{generator}, fold {fold}: the real cells' top marker of each type, test vs synthetic cells")
    return ranking, candidates, figure_to_image(fig, dpi=settings.figures.dpi)


def _augmentation(synthetic: AnnData, upsample: AnnData, i: InteractionSettings) -> tuple[str, AnnData]:
    return i.real_plus_synthetic, (upsample if i.real_plus_synthetic == "upsample" else synthetic)


def synthetic_interactions(
    train: AnnData, synthetic: AnnData, upsample: AnnData, downstream: dict[str, Any], *, generator: str, fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CellPhoneDB interactions of the generator's cells: synthetic only, and real training + synthetic.

    Synthetic only: the matched cells (as many as the test cells). Real + synthetic: the training
    cells plus the generator's ``upsample`` cells (default; the paper's augmentation) or its matched
    cells (``downstream.interactions.real_plus_synthetic``).
    """
    i = _for_cells(downstream, train).interactions
    only = _interactions(synthetic, i, f"{generator} fold {fold} synthetic only")
    choice, extra = _augmentation(synthetic, upsample, i)
    combined = ds.combine_cells([("real", train), (f"synthetic_{choice}", extra)], LABEL_KEY)
    both = _interactions(combined, i, f"{generator} fold {fold} real + synthetic ({choice})")
    return only, both


def score_generator(
    test_ranking: pd.DataFrame, ranking: pd.DataFrame, test_interactions: pd.DataFrame,
    synthetic_only: pd.DataFrame, real_plus_synthetic: pd.DataFrame, train: AnnData, synthetic: AnnData,
    upsample: AnnData, downstream: dict[str, Any], *, generator: str, fold: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Marker preservation and interaction comparison of one generator against the test cells."""
    settings = _for_cells(downstream, train)
    markers = _preservation_rows(test_ranking, ranking, settings.markers, fold=fold, generator=generator,
                                 compared=SYNTHETIC_ONLY)
    choice, extra = _augmentation(synthetic, upsample, settings.interactions)
    rows = [
        _comparison_row(test_interactions, synthetic_only, settings.interactions, fold=fold, generator=generator,
                        cells=SYNTHETIC_ONLY, n_cells=synthetic.n_obs),
        _comparison_row(test_interactions, real_plus_synthetic, settings.interactions, fold=fold,
                        generator=generator, cells=REAL_PLUS_SYNTHETIC, n_cells=train.n_obs + extra.n_obs),
    ]
    rows[1]["synthetic_cells"] = choice
    return markers, pd.DataFrame(rows)


# ----------------------------------------------------------------------------- reporting
def plot_fold_interactions(
    downstream: dict[str, Any], test_interactions: pd.DataFrame, train_interactions: pd.DataFrame,
    *generator_tables: pd.DataFrame, generators: tuple[str, ...], fold: int,
) -> tuple[Any, Any]:
    """Heatmaps of significant interaction counts (Fig 6) and the dot plot (Fig 7) of one fold.

    ``generator_tables``: for each of ``generators`` in order, its synthetic-only then its
    real + synthetic table.
    """
    if len(generator_tables) != 2 * len(generators):
        raise ValueError("plot_fold_interactions needs two interaction tables per generator")
    only = {f"{g} ({SYNTHETIC_ONLY})": generator_tables[2 * i] for i, g in enumerate(generators)}
    both = {f"{g} ({REAL_PLUS_SYNTHETIC})": generator_tables[2 * i + 1] for i, g in enumerate(generators)}
    tables = {TEST_CELLS: test_interactions, REAL_TRAINING: train_interactions, **only, **both}
    f = DownstreamSettings.from_params(downstream).figures
    heatmaps = figures.plot_interaction_heatmaps(
        tables, title=f"Fold {fold}: significant interactions between cell types (CellPhoneDB via LIANA)")
    dotplot = figures.plot_interaction_dotplot(
        {TEST_CELLS: test_interactions, REAL_TRAINING: train_interactions, **only}, TEST_CELLS,
        n_pairs=f.dotplot_pairs, n_celltype_pairs=f.dotplot_celltype_pairs,
        title=f"Fold {fold}: strongest ligand–receptor pairs of the test cells, in every set of cells")
    return figure_to_image(heatmaps, dpi=f.dpi), figure_to_image(dotplot, dpi=f.dpi)


def textbook_markers_by_set(
    downstream: dict[str, Any], dataset: dict[str, Any], *fold_objects: pd.DataFrame, generators: tuple[str, ...],
    folds: tuple[int, ...],
) -> pd.DataFrame:
    """Which textbook markers (``downstream.markers.expected`` of ``dataset.name``) each set's top markers hold.

    ``fold_objects``: for each fold in order, the real cells' textbook check (train + test), the test
    cells' marker ranking, then each generator's (matched cells) ranking. Returns
    :func:`cellsynth.downstream.textbook_marker_summary` over the folds (empty without expected markers).
    """
    per_fold = 2 + len(generators)
    if len(fold_objects) != per_fold * len(folds):
        raise ValueError("textbook_markers_by_set: unexpected number of fold objects")
    markers = DownstreamSettings.from_params(downstream).markers
    expected = markers.expected.get(DatasetSettings.from_params(dataset).name) or {}
    checks = []
    for j, k in enumerate(folds):
        real_check, test_ranking, *rankings = fold_objects[j * per_fold:(j + 1) * per_fold]
        checks.append(("real cells (train + test)", k, real_check))
        for name, ranking in zip((TEST_CELLS, *generators), (test_ranking, *rankings), strict=True):
            if not expected:
                continue
            top = ds.top_markers(ranking, **markers.selection())
            checks.append((name, k, ds.check_expected_markers(top, expected, genes=sorted(set(ranking["gene"])),
                                                               cell_types=sorted(set(ranking["cell_type"])))))
    return ds.textbook_marker_summary(checks)


def collect_frames(*frames: pd.DataFrame) -> pd.DataFrame:
    """One table from the per-fold and per-generator frames (real rows first)."""
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).sort_values(["fold"], kind="stable").reset_index(drop=True)


def explain_downstream_skipped(dataset: dict[str, Any], *, method: str) -> str:
    """The downstream section of a run on batch-corrected expression: why nothing was computed.

    Marker genes and CellPhoneDB interactions need log-normalised, non-negative expression; the folds
    of an integrated run hold values corrected with ``method`` (negative ones included), and the
    generators model those. Rather than statistics without meaning, or a run that fails after the
    generators and the evaluation have finished, this logs a warning and writes the reason.
    """
    name = DatasetSettings.from_params(dataset).name
    reason = (f"Downstream biology was not computed for {name}: the cells were "
              f"batch-corrected with integration.method={method}, and corrected values (negative ones "
              "included) are not valid input for marker tests or CellPhoneDB interaction means, which need "
              "log-normalised, non-negative expression. Run the downstream pipeline on one dataset, or with "
              "integration.method: none, to analyse the biology.")
    log.warning(reason)
    return missing_section(SECTION_ID, SECTION_TITLE, reason, dataset=name)


def build_downstream_section(
    marker_preservation: pd.DataFrame, interactions_rmse: pd.DataFrame, textbook_by_set: pd.DataFrame,
    downstream: dict[str, Any],
    dataset: dict[str, Any], *fold_objects: Any, generators: tuple[str, ...], folds: tuple[int, ...],
) -> str:
    """The report's downstream section (an HTML fragment).

    ``fold_objects``: for each fold in order, its candidate markers, textbook check, test-cell
    interactions, real violin plot, heatmaps and dot plot, then each generator's violin plot.
    """
    per_fold = 6 + len(generators)
    if len(fold_objects) != per_fold * len(folds):
        raise ValueError("build_downstream_section: unexpected number of fold objects")
    name = DatasetSettings.from_params(dataset).name
    settings = DownstreamSettings.from_params(downstream)
    n_markers = settings.figures.report_markers_per_type
    m, i = settings.markers, settings.interactions
    if "resource" in interactions_rmse and len(interactions_rmse):  # auto, as resolved for the cells' organism
        i = dataclasses.replace(i, resource_name=str(interactions_rmse["resource"].iloc[0]))
    tables: list[Table] = []
    figs: list[Figure] = []
    facts: list[str] = []
    marker_note = (f"{m.method} test; markers: adjusted p < {m.max_pval_adj}, log2FC > {m.min_logfc}, "
                   f"top {m.n_top} per type by {m.rank_by}.")
    for j, k in enumerate(folds):
        candidates, check, test_interactions, violins, heatmaps, dotplot, *generator_violins = fold_objects[
            j * per_fold:(j + 1) * per_fold]
        coverage = ds.resource_coverage(test_interactions, i.resource_name)
        facts.append(f"Fold {k}: {coverage['pairs_measured']} of the {coverage['pairs_in_resource']} ligand–receptor "
                     f"pairs of the {i.resource_name} resource can be scored on the test cells (all "
                     "their genes among the fold's HVGs and detected); the others cannot be analysed.")
        tables.append(Table(f"Candidate markers of the real cells, fold {k} (S1 Table, first {n_markers} per type)",
                            figures.marker_summary_rows(candidates, n_markers),
                            [marker_note, f"Full table: data/08_reporting/{name}/downstream/fold_{k}/candidate_markers_real.csv."]))
        if len(check):
            shown = check.assign(position=check["position"].map(lambda v: "–" if pd.isna(v) else str(int(v))))
            tables.append(Table(f"Textbook markers among the real cells' markers, fold {k} ({name})",
                                shown[["cell_type", "gene", "measured", "in_top", "position", "unique",
                                       "type_ok"]],
                                ["in_top: in the type's top list; unique: a mutually exclusive candidate; "
                                 "type_ok: one of the type's textbook markers is in its top list."], label_columns=2))
        figs.append(Figure(f"Fig 5: top marker of each cell type, real cells, fold {k}", image_to_png(violins),
                           "Each panel: one type's most significant mutually exclusive marker (type shaded), expression "
                           "in every cell type; fold's training + test cells."))
        for g, image in zip(generators, generator_violins, strict=True):
            figs.append(Figure(f"Markers in {g}'s cells, fold {k}", image_to_png(image),
                               "The real cells' top markers: test cells (blue) and the generator's matched "
                               "synthetic cells (red) per cell type."))
        figs.append(Figure(f"Fig 6: significant interactions between cell types, fold {k}", image_to_png(heatmaps),
                           f"Count of interactions with p ≤ {i.alpha} per source × target type "
                           "(one colour scale); grey: type not analysed in that set (too few cells)."))
        figs.append(Figure(f"Fig 7: strongest ligand–receptor pairs, fold {k}", image_to_png(dotplot),
                           "Rows and columns chosen on the test cells; colour: interaction mean; size: −log10 p; "
                           "black edge: significant; no dot: mean 0 (a partner not detected) or type not analysed."))
    tables.insert(0, Table("Interactions: aligned RMSE of interaction means against the test cells (Table 4)",
                           interaction_summary(interactions_rmse),
                           [f"LIANA CellPhoneDB, resource {i.resource_name}, expr_prop {i.expr_prop}, "
                            f"{i.n_perms} permutations (seed {i.seed}), min {i.min_cells} cells per type.",
                            f"Full table: data/08_reporting/{name}/interactions_rmse.csv (types left out in "
                            "types_excluded)."], label_columns=2))
    if name.lower().startswith("pancreas"):
        tables.insert(1, Table("For context: the paper's Table 4 as published (its integrated pancreas, first fold)",
                               PUBLISHED_TABLE_4_PANCREAS,
                               ["Turgut Ögme et al. 2025, Table 4: CellPhoneDB 5 means, rows compared by position; "
                                "'Original train vs test' = the real training cells. Ours above: aligned on "
                                "(ligand, receptor, source, target), fold mean ± sd.", PUBLISHED_PANCREAS_NOTE]))
    if len(textbook_by_set):
        tables.insert(0, Table(f"Textbook markers kept by each set of cells ({name})", textbook_by_set,
                               ["found/folds: folds in which the gene is among the type's top markers of that set "
                                f"(top {m.n_top}, {marker_note}); the real cells are the fold's training + test "
                                "cells, the test cells and each generator's matched cells are about a fifth of "
                                "them, so fewer markers pass the thresholds there.",
                                f"Full table: data/08_reporting/{name}/textbook_markers_by_set.csv."], "textbook_markers",
                               label_columns=2))
    tables.insert(0, Table("Marker preservation against the test cells",
                           preservation_summary(marker_preservation),
                           [marker_note, f"Per cell type: data/08_reporting/{name}/marker_preservation.csv."]))
    choice = i.real_plus_synthetic
    facts = [
        f"Dataset: {name}; folds: {', '.join(str(k) for k in folds)}; generators: {', '.join(generators) or 'none'}",
        "Real + synthetic = the real training cells + the generator's "
        + ("up-sampling cells (rare types topped up to the Q3 type size)" if choice == "upsample"
           else "matched cells (as many as the test cells)") + ".",
        *facts,
    ]
    return downstream_section(name, tables, figs, facts)
