"""Nodes of the ``preprocessing`` pipeline: thin adapters over :mod:`cellsynth.data`."""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import anndata
import pandas as pd
from anndata import AnnData

from cellsynth import tracking
from cellsynth.data import InputDataError, integration, normalise, quality_control, validate_counts
from cellsynth.data.validation import drop_unusable_cells
from cellsynth.reporting.figures import figure_to_png

log = logging.getLogger(__name__)


def validate_input(raw_cells: AnnData, dataset: dict[str, Any]) -> AnnData:
    """Check the user's file (raw counts, labels, names) and return a clean copy of its counts."""
    clean, report = validate_counts(
        raw_cells,
        source=str(dataset["path"]),
        label_key=dataset["label_key"],
        batch_key=dataset.get("batch_key"),
        counts_layer=dataset.get("counts_layer"),
    )
    log.info(
        "%s: %d cells × %d genes, counts read from %s, %d cells without a label",
        report.source, clean.n_obs, clean.n_vars, report.counts_from, report.n_unlabelled,
    )
    clean.uns["dataset_name"] = dataset["name"]
    return clean


def filter_cells_and_genes(
    validated_counts: AnnData, preprocessing: dict[str, Any], splitting: dict[str, Any], dataset: dict[str, Any]
) -> tuple[AnnData, pd.DataFrame]:
    """QC with the configured thresholds, then drop unlabelled cells and types too small to stratify."""
    qc = preprocessing["qc"]
    filtered, summary = quality_control(
        validated_counts,
        min_cells_per_gene=qc["min_cells_per_gene"],
        min_genes_per_cell=qc["min_genes_per_cell"],
        max_genes_per_cell=qc["max_genes_per_cell"],
        max_pct_mito=qc["max_pct_mito"],
        mito_prefixes=qc["mito_prefixes"],
        source=str(dataset["path"]),
    )
    kept, dropped, unlabelled = drop_unusable_cells(
        filtered, preprocessing["min_cells_per_type"], source=str(dataset["path"]), n_folds=splitting["n_folds"]
    )
    if unlabelled:
        summary.loc[len(summary)] = [f"cells with a label (dropped {unlabelled})", filtered.n_obs - unlabelled, kept.n_vars]
    if dropped:
        step = f"cell types with >= {preprocessing['min_cells_per_type']} cells (dropped {dropped})"
        summary.loc[len(summary)] = [step, kept.n_obs, kept.n_vars]
    summary.insert(0, "dataset", dataset["name"])
    return kept, summary


def log_normalise(qc_cells: AnnData, preprocessing: dict[str, Any]) -> AnnData:
    """Library-size normalisation and log1p; raw counts kept in ``layers["counts"]``."""
    return normalise(qc_cells, target_sum=float(preprocessing["target_sum"]))


# ----------------------------------------------------------------------------- several datasets
# Used when the `datasets` parameter lists inputs (see pipeline.py and cellsynth.data.integration).


def _qc_thresholds(preprocessing: dict[str, Any], spec: integration.DatasetSpec) -> dict[str, Any]:
    qc = {**preprocessing["qc"], **spec.qc}
    unknown = sorted(set(spec.qc) - set(preprocessing["qc"]))
    if unknown:
        raise InputDataError(
            f"{spec.source}: unknown qc settings {unknown}; allowed: {sorted(preprocessing['qc'])}"
        )
    return qc


def load_datasets(datasets: list[dict[str, Any]], integration_params: dict[str, Any]) -> dict[str, AnnData]:
    """Read and validate every listed file; refuse a dataset whose genes barely overlap another's."""
    specs = integration.parse_dataset_specs(datasets)
    validated: dict[str, AnnData] = {}
    for spec in specs:
        if not Path(spec.path).is_file():
            raise InputDataError(f"{spec.source}: no such file. Fix its path in the `datasets` parameter.")
        clean, report = validate_counts(
            anndata.read_h5ad(spec.path),
            source=spec.source,
            label_key=spec.label_key,
            batch_key=spec.batch_key,
            counts_layer=spec.counts_layer,
        )
        log.info(
            "%s: %d cells × %d genes, counts read from %s, %d cells without a label",
            report.source, clean.n_obs, clean.n_vars, report.counts_from, report.n_unlabelled,
        )
        validated[spec.name] = clean
    overlap = integration.check_gene_overlap(
        {name: a.var_names for name, a in validated.items()},
        min_overlap=float(integration_params.get("min_gene_overlap", 0.5)),
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
) -> tuple[AnnData, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """QC per dataset (its own thresholds), harmonised labels, shared genes, one AnnData with ``obs["batch"]``.

    Returns the ``qc_cells``-shaped object (raw counts in ``X``, ``obs["cell_type"]``, ``obs["batch"]``),
    the QC summary (one block per dataset, then the combined data), the shared-genes table and the
    label-harmonisation table.
    """
    specs = {s.name: s for s in integration.parse_dataset_specs(datasets)}
    label_mapping = dict(label_mapping or {})
    unknown = sorted(set(label_mapping) - set(specs))
    if unknown:
        raise InputDataError(
            f"label_mapping has entries for {unknown}, which are not in `datasets` ({sorted(specs)})"
        )
    parts, summaries, label_tables, genes_in = {}, [], [], {}
    for name, validated in validated_datasets.items():
        spec = specs[name]
        qc = _qc_thresholds(preprocessing, spec)
        filtered, summary = quality_control(
            validated,
            min_cells_per_gene=qc["min_cells_per_gene"],
            min_genes_per_cell=qc["min_genes_per_cell"],
            max_genes_per_cell=qc["max_genes_per_cell"],
            max_pct_mito=qc["max_pct_mito"],
            mito_prefixes=qc["mito_prefixes"],
            source=spec.source,
        )
        mapped, labels = integration.harmonise_labels(
            filtered, label_mapping.get(name), dataset=name, unmapped=integration_params.get("unmapped_labels", "keep")
        )
        dropped = int(labels.loc[labels["harmonised"] == "", "n_cells"].sum())
        if dropped:
            summary.loc[len(summary)] = [f"harmonised labels (dropped {dropped})", mapped.n_obs, mapped.n_vars]
        summary.insert(0, "dataset", name)
        summaries.append(summary)
        label_tables.append(labels)
        genes_in[name] = validated.n_vars
        parts[name] = mapped
    genes, gene_table = integration.shared_genes({name: part.var_names for name, part in parts.items()})
    gene_table.insert(1, "genes_in_file", gene_table["dataset"].map(genes_in))
    gene_table = gene_table.rename(columns={"genes": "genes_after_qc"})
    combined = integration.concatenate_datasets(parts, genes)
    name = dataset["name"]
    rows = [("concatenated on the shared genes", combined.n_obs, combined.n_vars)]
    kept, rare, unlabelled = drop_unusable_cells(
        combined, preprocessing["min_cells_per_type"], source=f"integrated {name}", n_folds=splitting["n_folds"]
    )
    if unlabelled:
        rows.append((f"cells with a label (dropped {unlabelled})", combined.n_obs - unlabelled, kept.n_vars))
    if rare:
        rows.append((f"cell types with >= {preprocessing['min_cells_per_type']} cells (dropped {rare})", kept.n_obs, kept.n_vars))
    combined_summary = pd.DataFrame(rows, columns=["step", "n_cells", "n_genes"])
    combined_summary.insert(0, "dataset", name)
    kept.uns["dataset_name"] = name
    kept.uns["integration"] = {
        "datasets": list(parts),
        "n_shared_genes": int(len(genes)),
        "sources": [specs[n].path for n in parts],
    }
    log.info(
        "integrated %s: %d cells × %d shared genes from %s; cells per type and batch:\n%s",
        name, kept.n_obs, kept.n_vars, list(parts), integration.cells_per_type(kept).to_string(index=False),
    )
    qc_summary = pd.concat([*summaries, combined_summary], ignore_index=True)
    return kept, qc_summary, gene_table, pd.concat(label_tables, ignore_index=True)


def correct_batches(uncorrected_cells: AnnData, integration_params: dict[str, Any]) -> AnnData:
    """Batch correction of the log-expression in gene space (``none | combat | linear``)."""
    return integration.correct_batch_effects(
        uncorrected_cells,
        str(integration_params.get("method", "combat")),
        protect_cell_type=bool(integration_params.get("protect_cell_type", True)),
    )


def score_integration(
    normalised_cells: AnnData,
    integration_genes: pd.DataFrame,
    label_harmonisation: pd.DataFrame,
    integration_params: dict[str, Any],
    dataset: dict[str, Any],
):
    """Batch and cell-type silhouettes before/after correction, the UMAP figure and the report section.

    Also logged into the ``kedro run``'s parent MLflow run (metrics ``integration.*`` and the
    artifacts under ``integration/``).
    """
    from PIL import Image

    scoring = dict(integration_params.get("scoring") or {})
    seed = int(scoring.get("seed", 0))
    scores = integration.integration_scores(
        normalised_cells,
        n_top_genes=int(scoring.get("n_top_genes", 2000)),
        n_pcs=int(scoring.get("n_pcs", 30)),
        max_cells=scoring.get("max_cells", 20000),
        seed=seed,
    )
    correction = normalised_cells.uns.get("batch_correction", {})
    method = str(correction.get("method", integration_params.get("method")))
    figure = integration.integration_figure(
        scores, method=method, n_neighbors=int(scoring.get("n_neighbors", 15)), seed=seed
    )
    png = figure_to_png(figure, tight=True)
    import matplotlib.pyplot as plt

    plt.close(figure)
    per_type = integration.cells_per_type(normalised_cells)
    section = integration.integration_section_html(
        dataset=str(dataset["name"]),
        method=method,
        protect_cell_type=bool(correction.get("protect_cell_type", False)),
        scores=scores.table,
        per_type=scores.per_type,
        cells_per_type=per_type,
        genes=integration_genes,
        labels=label_harmonisation,
        figure_png_bytes=png,
    )
    _log_integration(scores, per_type, png, section)
    image = Image.open(io.BytesIO(png))
    image.load()
    return scores.table, scores.per_type, per_type, image, section


def _log_integration(scores: integration.IntegrationScores, per_type: pd.DataFrame, png: bytes, section: str) -> None:
    recorder = tracking.parent_recorder()
    if not recorder.run_id:
        return
    try:
        recorder.log_metrics({f"integration.{k}": v for k, v in scores.metrics().items()})
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "integration_umap.png").write_bytes(png)
            (root / "integration_section.html").write_text(section, encoding="utf-8")
            scores.table.to_csv(root / "integration_scores.csv", index=False)
            scores.per_type.to_csv(root / "integration_asw_per_type.csv", index=False)
            per_type.to_csv(root / "integration_cells_per_type.csv", index=False)
            recorder.log_artifacts(root, "integration")
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the pipeline
        log.warning("could not log the integration scores into the parent MLflow run: %s", exc)
