"""Summary tables and the self-contained HTML section of the downstream analyses.

The section is a fragment (``<section id="downstream">…</section>``: its own scoped CSS, figures as
base64 PNG ``data:`` URIs, no script, no external link) that a full report can paste in, e.g. before
its parameters block.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["REAL_TRAIN_VS_TEST", "SectionFigure", "SectionTable", "build_section_html", "insert_section",
           "interaction_summary", "preservation_summary"]

REAL_TRAIN_VS_TEST = "real train vs test"
"""Name of the real-data row (real training cells against the test cells), as in the evaluation tables."""
SYNTHETIC_ONLY = "synthetic only"
REAL_PLUS_SYNTHETIC = "real + synthetic"
REAL_TRAINING = "real training cells"


@dataclass
class SectionTable:
    title: str
    table: pd.DataFrame
    notes: Sequence[str] = field(default_factory=tuple)


@dataclass
class SectionFigure:
    title: str
    png: bytes
    caption: str = ""


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


def _table_html(item: SectionTable) -> str:
    frame = item.table
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            if isinstance(value, float | np.floating):
                text = "–" if not np.isfinite(value) else f"{value:.4g}"
            else:
                text = str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in item.notes)
    return (f"<h3>{html.escape(item.title)}</h3>\n<table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>\n" + (f'<ul class="notes">{notes}</ul>' if notes else ""))


def _figure_html(item: SectionFigure) -> str:
    data = base64.b64encode(item.png).decode("ascii")
    return (f"<figure><h3>{html.escape(item.title)}</h3><img alt=\"{html.escape(item.title)}\" "
            f"src=\"data:image/png;base64,{data}\"><figcaption>{html.escape(item.caption)}</figcaption></figure>")


_CSS = """
#downstream table{border-collapse:collapse;margin:0.5em 0 0.3em;font-size:0.85em}
#downstream th,#downstream td{border:1px solid #ccc;padding:3px 7px;text-align:right}
#downstream th{background:#f2f2f2}
#downstream td:first-child,#downstream td:nth-child(2){text-align:left}
#downstream ul.notes{font-size:0.8em;color:#555;margin-top:0}
#downstream figure{margin:1.2em 0}
#downstream img{max-width:100%;height:auto;border:1px solid #eee}
#downstream figcaption{font-size:0.8em;color:#555}
"""

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


def build_section_html(tables: Sequence[SectionTable], figures: Sequence[SectionFigure],
                       summary_lines: Sequence[str] = (), title: str = "Downstream biology: marker genes and "
                       "cell–cell interactions") -> str:
    """The HTML fragment: title, how to read, facts, tables, figures."""
    facts = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines)
    parts = [
        '<section id="downstream">',
        f"<style>{_CSS}</style>",
        f"<h2>{html.escape(title)}</h2>",
        HOW_TO_READ,
        f'<ul class="notes">{facts}</ul>' if facts else "",
        *(_table_html(t) for t in tables),
        *(_figure_html(f) for f in figures),
        "</section>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def insert_section(report_html: str, section_html: str) -> str:
    """``report_html`` with the downstream section pasted in.

    The section goes before the report's parameters block (``<h2 id="parameters">``) when there is
    one, else before ``</body>`` (else at the end); a ``Downstream biology`` link is added to the
    report's ``<nav>`` if it has one. An empty section leaves the report unchanged.
    """
    if not section_html.strip():
        return report_html
    for anchor in ('<h2 id="parameters">', "</body>"):
        at = report_html.find(anchor)
        if at >= 0:
            out = report_html[:at] + section_html.rstrip() + "\n" + report_html[at:]
            break
    else:
        out = report_html.rstrip() + "\n" + section_html
    nav = out.find("</nav>")
    if nav >= 0 and 'href="#downstream"' not in out[:nav]:
        out = out[:nav] + '<a href="#downstream">Downstream biology</a>' + out[nav:]
    return out
