"""Nodes of the ``preprocessing`` pipeline: thin adapters over :mod:`cellsynth.data`."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from typing import Any

import pandas as pd
from anndata import AnnData

from cellsynth import provenance
from cellsynth.config import (
    DatasetSettings,
    IntegrationSettings,
    PreprocessingSettings,
    QCSettings,
    SplittingSettings,
)
from cellsynth.data import InputDataError, integration, normalise, quality_control, validate_counts
from cellsynth.data.clustering import leiden_clusters
from cellsynth.data.organism import MITO_PREFIX, resolve_organism
from cellsynth.data.preprocess import qc_input_metrics
from cellsynth.data.qc_figures import plot_qc_distributions
from cellsynth.data.splits import check_enough_cells
from cellsynth.data.validation import drop_unusable_cells
from cellsynth.reporting.figures import figure_to_image, figure_to_png
from cellsynth.schema import LABEL_KEY

log = logging.getLogger(__name__)


def _mito_prefixes(qc: QCSettings, organism: str) -> tuple[str, ...]:
    return qc.mito_prefixes if qc.mito_prefixes is not None else (MITO_PREFIX[organism],)


def _qc(adata: AnnData, qc: QCSettings, organism: str, source: str) -> tuple[AnnData, pd.DataFrame]:
    kwargs = {**dataclasses.asdict(qc), "mito_prefixes": _mito_prefixes(qc, organism)}
    filtered, summary = quality_control(adata, **kwargs, source=source)
    return filtered, summary


def _input_metrics(adata: AnnData, qc: QCSettings, organism: str) -> pd.DataFrame:
    return qc_input_metrics(adata, min_cells_per_gene=qc.min_cells_per_gene, mito_prefixes=_mito_prefixes(qc, organism))[0]


def _qc_figure(metrics: dict[str, pd.DataFrame], qc_cells: dict[str, AnnData]):
    figure = plot_qc_distributions(metrics, {n: a.uns["qc"]["thresholds"] for n, a in qc_cells.items()},
                                   {n: bool(a.uns["qc"]["mito_genes"]) for n, a in qc_cells.items()})
    return figure_to_image(figure)


def _status(count: int, min_cells: int, n_folds: int) -> str:
    if count < n_folds:
        return f"dropped: {count} cells, fewer than the {n_folds} folds (each fold needs a test cell)"
    if count < min_cells:
        return (f"dropped: {count} cells < preprocessing.min_cells_per_type={min_cells} "
                f"(set it to {n_folds}, the number of folds, to keep such types)")
    return "kept"


def _cell_types(after_qc: pd.DataFrame, rare: dict[str, int], min_cells: int, n_folds: int) -> pd.DataFrame:
    """One row per cell type after QC: its counts and whether it was kept (the reason when it was not)."""
    table = after_qc.copy()
    table["status"] = [_status(int(n), min_cells, n_folds) if t in rare else "kept"
                       for t, n in zip(table["cell_type"], table["cells_after_qc"], strict=True)]
    return table.sort_values("cells_after_qc", ascending=False, kind="stable").reset_index(drop=True)


def _type_counts(adata: AnnData) -> pd.Series:
    return adata.obs[LABEL_KEY].astype(object).dropna().value_counts()


def validate_input(raw_cells: AnnData, dataset: dict[str, Any]) -> AnnData:
    """Check the user's file (raw counts, labels, names) and return a clean copy of its counts."""
    settings = DatasetSettings.from_params(dataset)
    clean, report = validate_counts(raw_cells, source=settings.path, label_key=settings.label_key,
                                    batch_key=settings.batch_key, counts_layer=settings.counts_layer)
    log.info(
        "%s: %d cells × %d genes, counts read from %s, %d cells without a label",
        report.source, clean.n_obs, clean.n_vars, report.counts_from, report.n_unlabelled,
    )
    if settings.batch_key is not None:
        log.warning(
            "%s: dataset.batch_key=%r is kept as obs['batch'] in every output but not used: one dataset is "
            "neither batch-corrected nor split by batch. To correct batches, integrate (list the data in "
            "`datasets`, see docs/integration.md).", settings.path, settings.batch_key)
    if settings.label_key is None:
        log.info("%s: no cell-type column (dataset.label_key: null): the cells will be labelled by Leiden clusters "
                 "after QC (dataset.cluster_if_unlabelled)", settings.path)
    clean.uns["dataset_name"] = settings.name
    provenance.stamp(clean, {"dataset": provenance.dataset_section(settings, None, {settings.name: _fingerprint(raw_cells)})})
    return clean


def _fingerprint(raw: AnnData) -> dict[str, Any] | None:
    """The input file's fingerprint the raw-file dataset put on what it loaded (``None`` if it did not)."""
    value = raw.uns.get(provenance.FILE_KEY)
    return json.loads(value) if isinstance(value, str) else None


def filter_cells_and_genes(
    validated_counts: AnnData, preprocessing: dict[str, Any], splitting: dict[str, Any], dataset: dict[str, Any]
) -> tuple[AnnData, pd.DataFrame, pd.DataFrame, Any]:
    """QC with the dataset's thresholds, then drop unlabelled cells and types too small to stratify.

    The organism (``dataset.organism``, or detected from the gene names) picks the mitochondrial prefix
    and is kept in ``uns["organism"]`` for the downstream analyses. Returns the kept cells, the QC
    summary (one row per step, with the cells each step removed per type), the cell-type table (cells
    before and after QC, kept or dropped and why) and the figure of the QC distributions.
    """
    settings = PreprocessingSettings.from_params(preprocessing)
    data = DatasetSettings.from_params(dataset)
    n_folds = SplittingSettings.from_params(splitting).n_folds
    organism, detected = resolve_organism(data.organism, validated_counts.var_names, source=data.path)
    log.info("%s: organism %s (%s)", data.path, organism, "detected from the gene names" if detected else "dataset.organism")
    qc = settings.qc_for(data.name)
    filtered, summary = _qc(validated_counts, qc, organism, data.path)
    clustered = data.label_key is None and data.cluster_if_unlabelled
    if clustered:
        filtered = _label_by_clusters(filtered, settings, data.path, same_as=validated_counts)
        n_clusters = filtered.obs[LABEL_KEY].nunique()
        summary.loc[len(summary)] = [f"labelled by Leiden clustering ({n_clusters} clusters, resolution "
                                     f"{settings.clustering.resolution:g})", filtered.n_obs, filtered.n_vars,
                                     f"preprocessing.clustering.resolution {settings.clustering.resolution:g}", ""]
    kept, dropped, unlabelled = drop_unusable_cells(filtered, settings.min_cells_per_type, source=data.path, n_folds=n_folds)
    check_enough_cells(kept.n_obs, n_folds=n_folds, source=data.path)
    if unlabelled:
        summary.loc[len(summary)] = [f"cells with a label (dropped {unlabelled})", filtered.n_obs - unlabelled,
                                     kept.n_vars, "", f"(unlabelled) {unlabelled}"]
    if dropped:
        step = f"cell types with >= {max(settings.min_cells_per_type, n_folds)} cells (dropped {dropped})"
        summary.loc[len(summary)] = [step, kept.n_obs, kept.n_vars, f"min_cells_per_type {settings.min_cells_per_type}, "
                                     f"n_folds {n_folds}", "; ".join(f"{t} {n}" for t, n in dropped.items())]
    summary.insert(0, "dataset", data.name)
    if kept is validated_counts:  # nothing removed: the record goes on a copy, never on the input
        kept = kept.copy()
    provenance.stamp(kept, provenance.with_sections(
        provenance.record_of(validated_counts),
        preprocessing=provenance.preprocessing_section(preprocessing, splitting)))
    # Clusters exist only after QC: their "input" counts are the cells QC kept.
    before, after = _type_counts(filtered if clustered else validated_counts), _type_counts(filtered)
    types = pd.DataFrame({"cell_type": before.index.astype(str), "input_cells": before.to_numpy()})
    types["cells_after_qc"] = types["cell_type"].map(after).fillna(0).astype(int)
    types.insert(2, "removed_by_qc", types["input_cells"] - types["cells_after_qc"])
    kept.uns["organism"] = {"name": organism, "detected": detected}
    figure = _qc_figure({data.name: _input_metrics(validated_counts, qc, organism)}, {data.name: filtered})
    return kept, summary, _cell_types(types, dropped, settings.min_cells_per_type, n_folds), figure


def _label_by_clusters(cells: AnnData, settings: PreprocessingSettings, source: str, *, same_as: AnnData) -> AnnData:
    """``cells`` with ``obs["cell_type"]`` = their Leiden cluster (``cluster 0`` the largest), a new object."""
    c = settings.clustering
    clusters = leiden_clusters(cells, resolution=c.resolution, n_top_genes=c.n_top_genes, n_pcs=c.n_pcs,
                               n_neighbors=c.n_neighbors, seed=c.seed, target_sum=settings.target_sum)
    labelled = cells.copy() if cells is same_as else cells
    labelled.obs[LABEL_KEY] = clusters
    sizes = labelled.obs[LABEL_KEY].value_counts().to_dict()
    log.warning("%s: unlabelled cells labelled by Leiden clustering: %d clusters (%s); they stand for cell types "
                "in every table, figure and model", source, len(sizes),
                ", ".join(f"{k}: {v}" for k, v in sizes.items()))
    return labelled


def log_normalise(qc_cells: AnnData, preprocessing: dict[str, Any]) -> AnnData:
    """Library-size normalisation and log1p; raw counts kept in ``layers["counts"]``."""
    return normalise(qc_cells, target_sum=PreprocessingSettings.from_params(preprocessing).target_sum)


def record_provenance(qc_cells: AnnData) -> dict[str, Any]:
    """The preprocessed cells' provenance record (input files' hashes, parameters) on its own, for the
    report and MLflow (normalisation and batch correction keep it as it is)."""
    record = provenance.record_of(qc_cells)
    if record is None:
        raise InputDataError("the QC'd cells have no provenance record: rerun the preprocessing pipeline.")
    return record


# ----------------------------------------------------------------------------- several datasets
# Used when the `datasets` parameter lists inputs (see pipeline.py and cellsynth.data.integration).


def _dataset_qc(preprocessing: PreprocessingSettings, spec: integration.DatasetSpec) -> QCSettings:
    """``preprocessing.qc`` with ``qc_by_dataset``'s entry and the dataset's own overrides (an unknown key is an
    error naming the dataset)."""
    try:
        return preprocessing.qc_for(spec.name, spec.qc)
    except ValueError as exc:
        raise InputDataError(f"{spec.source}: qc: {exc}") from None


def load_datasets(
    raw_datasets: dict[str, AnnData], datasets: list[dict[str, Any]], integration_params: dict[str, Any]
) -> dict[str, AnnData]:
    """Validate every listed file; refuse a dataset whose genes barely overlap another's."""
    validated: dict[str, AnnData] = {}
    for spec in integration.parse_dataset_specs(datasets):
        clean, report = validate_counts(raw_datasets[spec.name], source=spec.source, label_key=spec.label_key,
                                        batch_key=spec.batch_key, counts_layer=spec.counts_layer)
        log.info(
            "%s: %d cells × %d genes, counts read from %s, %d cells without a label",
            report.source, clean.n_obs, clean.n_vars, report.counts_from, report.n_unlabelled,
        )
        if provenance.FILE_KEY in raw_datasets[spec.name].uns:
            clean.uns[provenance.FILE_KEY] = raw_datasets[spec.name].uns[provenance.FILE_KEY]
        validated[spec.name] = clean
    overlap = integration.check_gene_overlap(
        {name: a.var_names for name, a in validated.items()},
        min_overlap=IntegrationSettings.from_params(integration_params).min_gene_overlap,
    )
    for row in overlap.itertuples():
        log.info("datasets %r and %r share %d genes (%.0f%% of the smaller)", row.dataset_a, row.dataset_b, row.shared, 100 * row.overlap)
    return validated


def combine_datasets(
    validated_datasets: dict[str, AnnData],
    datasets: list[dict[str, Any]],
    label_mapping: dict[str, Any] | None,
    preprocessing: dict[str, Any],
    splitting: dict[str, Any],
    integration_params: dict[str, Any],
    dataset: dict[str, Any],
) -> tuple[AnnData, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, Any]:
    """QC per dataset (its own thresholds), harmonised labels, shared genes, one AnnData with ``obs["batch"]``.

    Returns the ``qc_cells``-shaped object (raw counts in ``X``, ``obs["cell_type"]``, ``obs["batch"]``),
    the QC summary (one block per dataset, then the combined data), the shared-genes table, the
    label-harmonisation table, the cell-type table (harmonised types: cells per dataset after QC, kept or
    dropped and why) and the figure of every dataset's QC distributions.
    """
    specs = {s.name: s for s in integration.parse_dataset_specs(datasets)}
    settings = PreprocessingSettings.from_params(preprocessing)
    integrate = IntegrationSettings.from_params(integration_params)
    data = DatasetSettings.from_params(dataset)
    n_folds = SplittingSettings.from_params(splitting).n_folds
    label_mapping = dict(label_mapping or {})
    unknown = sorted(set(label_mapping) - set(specs))
    if unknown:
        raise InputDataError(
            f"label_mapping has entries for {unknown}, which are not in `datasets` ({sorted(specs)})"
        )
    parts, summaries, label_tables, genes_in, organisms, metrics, qc_cells = {}, [], [], {}, {}, {}, {}
    for name, validated in validated_datasets.items():
        spec = specs[name]
        organisms[name], _ = resolve_organism(data.organism, validated.var_names, source=spec.source)
        qc = _dataset_qc(settings, spec)
        filtered, summary = _qc(validated, qc, organisms[name], spec.source)
        metrics[name], qc_cells[name] = _input_metrics(validated, qc, organisms[name]), filtered
        mapped, labels = integration.harmonise_labels(
            filtered, label_mapping.get(name), dataset=name, unmapped=integrate.unmapped_labels
        )
        dropped = int(labels.loc[labels["harmonised"] == "", "n_cells"].sum())
        if dropped:
            summary.loc[len(summary)] = [f"harmonised labels (dropped {dropped})", mapped.n_obs, mapped.n_vars, "", ""]
        summary.insert(0, "dataset", name)
        summaries.append(summary)
        label_tables.append(labels)
        genes_in[name] = validated.n_vars
        parts[name] = mapped
    if len(set(organisms.values())) > 1:
        raise InputDataError(f"the datasets come from different organisms ({organisms}): integrate datasets of one "
                             "organism (or set dataset.organism if a detection is wrong)")
    genes, gene_table = integration.shared_genes({name: part.var_names for name, part in parts.items()})
    gene_table.insert(1, "genes_in_file", gene_table["dataset"].map(genes_in))
    gene_table = gene_table.rename(columns={"genes": "genes_after_qc"})
    combined = integration.concatenate_datasets(parts, genes)
    name = data.name
    rows = [("concatenated on the shared genes", combined.n_obs, combined.n_vars, "", "")]
    kept, rare, unlabelled = drop_unusable_cells(
        combined, settings.min_cells_per_type, source=f"integrated {name}", n_folds=n_folds,
    )
    check_enough_cells(kept.n_obs, n_folds=n_folds, source=f"integrated {name}")
    if unlabelled:
        rows.append((f"cells with a label (dropped {unlabelled})", combined.n_obs - unlabelled, kept.n_vars, "",
                     f"(unlabelled) {unlabelled}"))
    if rare:
        rows.append((f"cell types with >= {max(settings.min_cells_per_type, n_folds)} cells (dropped {rare})",
                     kept.n_obs, kept.n_vars, f"min_cells_per_type {settings.min_cells_per_type}, n_folds {n_folds}",
                     "; ".join(f"{t} {n}" for t, n in rare.items())))
    combined_summary = pd.DataFrame(rows, columns=["step", "n_cells", "n_genes", "threshold", "removed_per_type"])
    combined_summary.insert(0, "dataset", name)
    kept.uns["dataset_name"] = name
    files = {n: _fingerprint(validated_datasets[n]) for n in parts}
    provenance.stamp(kept, {
        "dataset": provenance.dataset_section(dataset, datasets, files),
        "preprocessing": provenance.preprocessing_section(preprocessing, splitting, integration_params, label_mapping,
                                                          several=True),
    })
    kept.uns["organism"] = {"name": next(iter(organisms.values())), "detected": data.organism is None}
    kept.uns["integration"] = {
        "datasets": list(parts),
        "n_shared_genes": int(len(genes)),
        "sources": [specs[n].path for n in parts],
    }
    log.info(
        "integrated %s: %d cells × %d shared genes from %s; cells per type and batch:\n%s",
        name, kept.n_obs, kept.n_vars, list(parts), integration.cells_per_type(kept).to_string(index=False),
    )
    per_dataset = pd.crosstab(combined.obs[LABEL_KEY].astype(object), combined.obs["dataset"].astype(object))
    types = pd.DataFrame({"cell_type": per_dataset.index.astype(str)})
    for batch in per_dataset.columns:
        types[f"cells_after_qc [{batch}]"] = per_dataset[batch].to_numpy()
    types["cells_after_qc"] = per_dataset.sum(axis=1).to_numpy()
    qc_summary = pd.concat([*summaries, combined_summary], ignore_index=True)
    return (kept, qc_summary, gene_table, pd.concat(label_tables, ignore_index=True),
            _cell_types(types, rare, settings.min_cells_per_type, n_folds), _qc_figure(metrics, qc_cells))


def correct_batches(uncorrected_cells: AnnData, integration_params: dict[str, Any]) -> AnnData:
    """Batch correction of the log-expression in gene space (``none | combat | linear``)."""
    settings = IntegrationSettings.from_params(integration_params)
    return integration.correct_batch_effects(uncorrected_cells, settings.method,
                                             protect_cell_type=settings.protect_cell_type)


def score_integration(
    normalised_cells: AnnData,
    integration_genes: pd.DataFrame,
    label_harmonisation: pd.DataFrame,
    integration_params: dict[str, Any],
    dataset: dict[str, Any],
):
    """Batch and cell-type silhouettes before/after correction, the UMAP figure and the report section."""
    from PIL import Image

    settings = IntegrationSettings.from_params(integration_params)
    scoring = settings.scoring
    scores = integration.integration_scores(normalised_cells, n_top_genes=scoring.n_top_genes, n_pcs=scoring.n_pcs,
                                            max_cells=scoring.max_cells, seed=scoring.seed)
    correction = normalised_cells.uns.get("batch_correction", {})
    method = str(correction.get("method", settings.method))
    figure = integration.integration_figure(scores, method=method, n_neighbors=scoring.n_neighbors, seed=scoring.seed)
    png = figure_to_png(figure, tight=True)
    import matplotlib.pyplot as plt

    plt.close(figure)
    per_type = integration.cells_per_type(normalised_cells)
    section = integration.integration_section_html(
        dataset=DatasetSettings.from_params(dataset).name,
        method=method,
        protect_cell_type=bool(correction.get("protect_cell_type", False)),
        scores=scores.table,
        per_type=scores.per_type,
        cells_per_type=per_type,
        genes=integration_genes,
        labels=label_harmonisation,
        figure_png_bytes=png,
    )
    image = Image.open(io.BytesIO(png))
    image.load()
    return scores.table, scores.per_type, per_type, image, section
