"""The report's data section: what QC removed (per step and per type), which cell types were kept and
how each is split into folds, and the QC distributions the thresholds were chosen from."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cellsynth.reporting.html import Figure, Table, section

SECTION_ID = "data"
SECTION_TITLE = "Data: quality control and cell types"

HOW_TO_READ = """
<p><b>QC</b> removes genes detected in too few cells, then cells step by step; each row says what a step
applied and how many cells of each type it removed. Thresholds are fixed numbers (the Seurat PBMC3K recipe
of the PBMC datasets) or chosen from the data: cells beyond <em>median ± k × MAD</em> (median absolute
deviation) of the log detected genes or log library size, or above it for the mitochondrial %.
<b>Cell types</b> with fewer cells than <code>preprocessing.min_cells_per_type</code>, or than the number
of folds (each fold's test part needs one of its cells), are dropped; every kept type is split by
stratified K-fold, so each fold's test part holds about a K-th of its cells.</p>
"""


def data_section(dataset: str, qc_summary: pd.DataFrame, cell_types: pd.DataFrame, qc_png: bytes,
                 facts: Sequence[str] = ()) -> str:
    """The data section fragment: the QC steps, the cell-type table and the QC figure."""
    dropped = cell_types[cell_types["status"] != "kept"]
    kept = cell_types[cell_types["status"] == "kept"]
    lines = [*facts, f"Cell types kept: {len(kept)}; dropped: {len(dropped)}"
             + (f" ({', '.join(f'{t} {n}' for t, n in zip(dropped['cell_type'], dropped['cells_after_qc'], strict=True))})"
                if len(dropped) else "")]
    tables = [
        Table("Quality control, step by step", qc_summary,
              ["n_cells / n_genes: after the step; removed_per_type: the cells the step removed, per type. "
               f"Full table: data/08_reporting/{dataset}/qc_summary.csv."], "qc_summary", label_columns=2),
        Table("Cell types: kept or dropped, and how each kept type is split", cell_types,
              ["test / training cells per fold: min–max over the folds. Full table: "
               f"data/08_reporting/{dataset}/cell_type_split.csv."], "cell_type_split"),
    ]
    figures = [Figure("QC distributions and thresholds", qc_png,
                      "Every input cell; dashed lines: the thresholds applied (black: fixed, red: from the data).",
                      "qc_distributions")]
    return section(SECTION_ID, SECTION_TITLE, dataset=dataset, tables=tables, figures=figures, facts=lines,
                   intro_html=HOW_TO_READ)
