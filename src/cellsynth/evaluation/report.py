"""A self-contained HTML report: inline CSS, figures as base64 PNG, no script, no external link.

It opens from disk with no server and no network (``file:///.../report.html``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml

__all__ = ["HOW_TO_READ", "ReportFigure", "ReportTable", "build_report_html"]


@dataclass
class ReportTable:
    """A table of the report: its title, the table itself, and notes printed under it."""

    title: str
    table: pd.DataFrame
    notes: Sequence[str] = field(default_factory=tuple)
    anchor: str = ""
    label_columns: int = 1
    """Leading columns holding labels (left-aligned); the others hold values (right-aligned)."""


@dataclass
class ReportFigure:
    """A figure of the report: its title, PNG bytes, and a caption."""

    title: str
    png: bytes
    caption: str = ""
    name: str = ""
    """File stem when the figure is saved on its own (e.g. as an MLflow artifact)."""


HOW_TO_READ = """
<p>Every distribution metric is computed in one <b>reference space</b> per fold: a StandardScaler and a
PCA (50 components) fitted on the fold's <em>real training cells only</em>; held-out and synthetic cells
are projected into it.</p>
<ul>
<li><b>The paper's protocol</b> (Table 1) compares each generator's cells (as many as the test cells,
in training proportions) with the test cells, by WD (mean 1-D Wasserstein distance over PCs), CD (mean
absolute difference of the PC correlation matrices) and MMD (biased RBF estimator over six γ). All three:
<b>lower is better</b>. Its "real train vs test" column is <em>not a floor</em>: the training cells are
in-sample for the PCA (their projection carries its overfit), so simple generators can "beat" real data.</li>
<li><b>The floor</b> (<code>real (B vs A floor)</code>) is what real data achieves when compared like for
like: the test cells are split (stratified by type, seeded) into halves A and B, and B is compared with A.
In the <b>honest protocol</b> every generator contributes as many cells as B (with B's type counts when it
has the types) and is compared with A in the same way; <b>(×r)</b> is the ratio to the floor, so ×1 is as
good as real data. For lower-is-better metrics ×r &gt; 1 is worse; for precision/recall ×r &lt; 1 is worse.</li>
<li><b>C2ST AUC</b>: cross-validated ROC-AUC of a gradient-boosting classifier telling real from synthetic
cells; 0.5 = indistinguishable (the floor is ≈ 0.5), 1 = trivially separable. <b>Lower is better, down to 0.5.</b></li>
<li><b>k-NN precision / recall</b> (Kynkäänniemi et al. 2019): precision = share of synthetic cells inside
the real cells' k-NN manifold (fidelity); recall = share of real cells inside the synthetic manifold
(coverage, low for mode collapse). <b>Higher is better</b>; the floor shows what real data reaches.</li>
<li><b>Memorisation</b>: median distance of the compared cells to their nearest training cell, divided by
that of real held-out cells (half A). ≈ 1 is healthy; ≪ 1 means the generator copies training cells
(privacy / overfitting), ≫ 1 means samples far from every real cell (poor fidelity). The close-to-train
fraction is the share of cells closer to a training cell than 5% of real held-out cells are (≈ 0.05 ok).</li>
<li><b>Sanity baselines</b> have a known answer and show what each metric can and cannot see:
<code>train_copy</code> (copies of training cells: must be flagged by memorisation),
<code>gene_shuffle</code> (each gene resampled independently within a type: no gene-gene structure) and
<code>class_gaussian_pca</code> (one Gaussian per type in a PCA space). A metric on which a baseline looks
as good as real data cannot tell that failure apart.</li>
<li><b>Classification utility</b> (Table 3): a random forest (entropy, 100 trees) on the HVG expression,
trained on the real training cells alone ("real only") or with each generator's up-sampling cells (rare
types topped up to the Q3 class size), scored on the test cells. <b>Higher is better</b>; the per-type F1
of the rare types is where synthetic cells should help.</li>
<li>Values are fold means (± sd over folds when several folds ran).</li>
</ul>
"""

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555;font-size:.92em}
table.metrics{border-collapse:collapse;font-size:.86em;margin:.6em 0;display:block;overflow-x:auto}
table.metrics th,table.metrics td{border:1px solid #d5d5d5;padding:.3em .55em;text-align:right;white-space:nowrap}
table.metrics th{background:#f1f3f6}
table.metrics td:first-child,table.metrics th:first-child{text-align:left}
table.labels2 td:nth-child(2),table.labels2 th:nth-child(2){text-align:left}
table.metrics tr:nth-child(even) td{background:#fafafa}
.note{color:#555;font-size:.85em;margin:.2em 0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #e3e3e3}
figcaption{color:#555;font-size:.85em}
pre{background:#f6f8fa;padding:.8em;font-size:.8em;overflow-x:auto;border:1px solid #e3e3e3}
nav a{margin-right:1em}
"""


def _table_html(item: ReportTable) -> str:
    classes = ["metrics"] + (["labels2"] if item.label_columns >= 2 else [])
    body = item.table.to_html(index=False, escape=True, border=0, classes=classes, na_rep="—")
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in item.notes)
    anchor = f' id="{html.escape(item.anchor)}"' if item.anchor else ""
    return f"<h2{anchor}>{html.escape(item.title)}</h2>\n{body}\n{notes}"


def _figure_html(item: ReportFigure) -> str:
    data = base64.b64encode(item.png).decode("ascii")
    caption = f"<figcaption>{html.escape(item.caption)}</figcaption>" if item.caption else ""
    return (f"<figure><h3>{html.escape(item.title)}</h3>"
            f'<img alt="{html.escape(item.title)}" src="data:image/png;base64,{data}">{caption}</figure>')


def build_report_html(
    *,
    dataset: str,
    tables: Sequence[ReportTable],
    figures: Sequence[ReportFigure],
    parameters: Mapping[str, Any],
    summary_lines: Sequence[str] = (),
    generated: str | None = None,
) -> str:
    """The report as one HTML string (UTF-8; no script; every image a ``data:`` URI).

    Parameters
    ----------
    dataset : str
        Dataset name for the title.
    tables : sequence of ReportTable
    figures : sequence of ReportFigure
    parameters : mapping
        The run's parameters, shown as YAML.
    summary_lines : sequence of str
        Short facts shown under the title (folds, generators, ...).
    generated : str, optional
        Timestamp text (default: now, UTC).
    """
    generated = generated or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{html.escape(t.anchor)}">{html.escape(t.title)}</a>' for t in tables if t.anchor)
    facts = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines)
    params = yaml.safe_dump(_plain(parameters), sort_keys=False, allow_unicode=True, default_flow_style=False)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>cellsynth evaluation: {html.escape(dataset)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>cellsynth evaluation: {html.escape(dataset)}</h1>",
        f'<p class="meta">Generated {html.escape(generated)}</p>',
        f"<ul class=\"meta\">{facts}</ul>" if facts else "",
        f"<nav>{nav}<a href=\"#figures\">Figures</a><a href=\"#parameters\">Parameters</a></nav>",
        '<h2 id="how-to-read">How to read this</h2>',
        HOW_TO_READ,
        *(_table_html(t) for t in tables),
        '<h2 id="figures">Figures</h2>',
        *(_figure_html(f) for f in figures),
        '<h2 id="parameters">Parameters of the run</h2>',
        f"<pre>{html.escape(params)}</pre>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _plain(value: Any) -> Any:
    """Parameters as plain YAML-safe Python (mappings, lists, scalars; anything else as text)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
