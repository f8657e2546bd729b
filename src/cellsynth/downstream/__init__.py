"""Downstream biology of real and synthetic cells (paper sections 2.5–2.6): marker genes and cell–cell
interactions, and how well synthetic cells preserve them. Plain library code: no Kedro.

* :mod:`~cellsynth.downstream.markers`: ``scanpy.tl.rank_genes_groups`` per cell type, top markers,
  mutually exclusive candidate markers (S1 Table), marker preservation;
* :mod:`~cellsynth.downstream.interactions`: LIANA's CellPhoneDB method (offline, seeded), interaction
  tables keyed on (ligand, receptor, source, target), aligned RMSE and Jaccard of significant pairs;
* :mod:`~cellsynth.downstream.figures`: violin plots (Fig 5), heatmaps (Fig 6), dot plot (Fig 7);
* :mod:`~cellsynth.downstream.report`: summary tables and the report section;
* :mod:`~cellsynth.downstream.checks`: refuse non-log-normalised (e.g. batch-corrected, negative) input.
"""

from cellsynth.downstream.checks import NegativeExpressionError, combine_cells, require_log_normalised
from cellsynth.downstream.interactions import (
    KEYS,
    aligned_rmse,
    compare_interactions,
    infer_interactions,
    resource_coverage,
    significant_counts,
    significant_jaccard,
)
from cellsynth.downstream.markers import (
    candidate_markers,
    check_expected_markers,
    marker_preservation,
    rank_markers,
    summarise_preservation,
    textbook_marker_summary,
    top_markers,
    top_unique_markers,
)

__all__ = [
    "KEYS",
    "NegativeExpressionError",
    "aligned_rmse",
    "candidate_markers",
    "check_expected_markers",
    "combine_cells",
    "compare_interactions",
    "infer_interactions",
    "marker_preservation",
    "rank_markers",
    "require_log_normalised",
    "resource_coverage",
    "significant_counts",
    "significant_jaccard",
    "summarise_preservation",
    "textbook_marker_summary",
    "top_markers",
    "top_unique_markers",
]
