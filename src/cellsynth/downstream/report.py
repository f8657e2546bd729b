"""The downstream analyses' part of the report: summary tables, how to read them, and the section
(a fragment built by :mod:`cellsynth.reporting.html`)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cellsynth.reporting.html import Figure, Table, section
from cellsynth.schema import REAL_TRAIN_VS_TEST

__all__ = ["HOW_TO_READ", "PUBLISHED_TABLE_4_PANCREAS", "REAL_PLUS_SYNTHETIC", "REAL_TRAINING", "REAL_TRAIN_VS_TEST", "SECTION_ID", "SECTION_TITLE",
           "SYNTHETIC_ONLY", "downstream_section", "interaction_summary", "preservation_summary"]

SECTION_ID = "downstream"
SECTION_TITLE = "Downstream biology: marker genes and cell–cell interactions"

PUBLISHED_TABLE_4_PANCREAS = pd.DataFrame(
    {"": ["RMSE ↓"], "Original train vs test": ["0.4253"], "MOE-FB": ["0.6522"], "MAF-FB": ["0.6760"],
     "CTGAN": ["0.7254"], "TVAE": ["0.7251"], "GC": ["0.8740"]}
)
"""The seed paper's Table 4 (integrated pancreas, first fold) as published: RMSE of CellPhoneDB interaction
means against the test cells, rows compared by position (cellsynth aligns them on the pair's keys)."""

SYNTHETIC_ONLY = "synthetic only"
REAL_PLUS_SYNTHETIC = "real + synthetic"
REAL_TRAINING = "real training cells"


def _mean_sd(values: pd.Series, digits: int) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _order(names: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    return [n for n in names if n == REAL_TRAIN_VS_TEST] + [n for n in names if n != REAL_TRAIN_VS_TEST]


def preservation_summary(per_type: pd.DataFrame) -> pd.DataFrame:
    """One row per compared set: means over types (fold mean ± sd when several folds)."""
    overall = per_type[per_type["cell_type"] == "all"]
    rows = []
    for generator in _order(overall["generator"]):
        part = overall[overall["generator"] == generator]
        rows.append({
            "compared with the test cells": generator,
            "cells": part["compared"].iloc[0],
            "folds": len(part),
            "Jaccard top markers ↑": _mean_sd(part["jaccard_top"], 3),
            "unique markers recovered ↑": _mean_sd(part["unique_recovered"], 3),
            "log2FC Spearman ↑": _mean_sd(part["logfc_spearman"], 3),
            "cell types": _mean_sd(part["n_types"], 0),
        })
    return pd.DataFrame(rows)


def interaction_summary(comparison: pd.DataFrame) -> pd.DataFrame:
    """One row per compared set and kind of cells (fold mean ± sd when several folds)."""
    rows = []
    kinds = [REAL_TRAINING, SYNTHETIC_ONLY, REAL_PLUS_SYNTHETIC]
    for generator in _order(comparison["generator"]):
        for kind in kinds:
            part = comparison[(comparison["generator"] == generator) & (comparison["cells"] == kind)]
            if part.empty:
                continue
            rows.append({
                "compared with the test cells": generator,
                "cells": kind,
                "folds": len(part),
                "n cells": _mean_sd(part["n_cells"], 0),
                "RMSE (aligned, union) ↓": _mean_sd(part["rmse"], 4),
                "RMSE (shared keys) ↓": _mean_sd(part["rmse_shared"], 4),
                "RMSE (expressed pairs) ↓": _mean_sd(part["rmse_expressed"], 4),
                "Jaccard significant ↑": _mean_sd(part["jaccard_significant"], 3),
                "significant (set / test)": f"{_mean_sd(part['n_significant_other'], 0)} / "
                                            f"{_mean_sd(part['n_significant_reference'], 0)}",
                "keys union / shared": f"{_mean_sd(part['n_union'], 0)} / {_mean_sd(part['n_shared'], 0)}",
            })
    return pd.DataFrame(rows)


HOW_TO_READ = """
<p>Do synthetic cells tell the same biological story as real ones? Two analyses from the paper
(sections 2.5–2.6), run on the fold's real and synthetic cells <b>on the fold's highly variable genes
only</b> (the genes the generators model): genes that are not HVGs, including many ligands and receptors
of the resource, are absent from every set.</p>
<ul>
<li><b>Marker genes</b> (Fig 5, S1 Table): each cell type against all others with
<code>scanpy.tl.rank_genes_groups</code>; a marker has adjusted p below the threshold and log2FC above it;
the top list of each type is kept, and a gene in one type's list only is a <em>mutually exclusive</em>
candidate marker. <b>Marker preservation</b> compares a set's markers with the test cells' (same genes,
same definition): per type the Jaccard overlap of the top lists, the share of the test cells' unique
markers found in the set's top list, and the Spearman correlation of log2FC over the genes differentially
expressed in either set; averaged over types. The <code>real train vs test</code> row is what real cells reach (more cells than the test set,
so more markers pass the thresholds).</li>
<li><b>Cell–cell interactions</b> (Figs 6–7, Table 4): LIANA's CellPhoneDB method (bundled resource, seeded
label permutations). Interaction mean = mean of the ligand's expression in the source type and the
receptor's in the target type. <b>RMSE</b> of the interaction means against the test cells, <b>aligned
on (ligand, receptor, source, target)</b> (the paper's code compared rows by position), over the union of
the two sets' pairs on the cell types analysed in both; a pair missing from one set (its gene not detected
there) counts as mean 0. <b>Jaccard significant</b>: overlap of the significant interactions. Lower RMSE
and higher Jaccard are closer to the test cells; the <code>real training cells</code> row is the paper's
"original train vs test" reference. <b>Mind the number of cells</b>: the interaction mean is 0 when one
partner is detected in no cell of its type and about half the other partner's mean as soon as one cell
expresses it, so sets with more cells than the test set (real training cells, real + synthetic) detect
more rare partners and get a higher RMSE for that alone; compare synthetic-only sets (as many cells as the
test set) with each other and with <code>train_copy</code> (real training cells at that size).
<em>RMSE (expressed pairs)</em>: only pairs above the expression threshold in either set. <em>Synthetic only</em>: the generator's matched cells (as many as the
test cells); <em>real + synthetic</em>: the real training cells plus the generator's cells, as named in
the table.</li>
</ul>
"""


def downstream_section(dataset: str, tables: Sequence[Table], figures: Sequence[Figure],
                       facts: Sequence[str] = ()) -> str:
    """The downstream section fragment: facts, how to read it, the tables and the figures."""
    return section(SECTION_ID, SECTION_TITLE, dataset=dataset, tables=tables, figures=figures, facts=facts,
                   intro_html=HOW_TO_READ)
