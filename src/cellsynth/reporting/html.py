"""The one HTML builder of the report: tables, figures, section fragments and the page that holds them.

Every analysis (evaluation, dataset integration, downstream biology) describes its part of the
report as a :func:`section`: a self-contained ``<section>`` fragment that can be written to disk on
its own; :func:`page` puts the fragments in one document with one stylesheet, a navigation bar and
the run's parameters. The page opens from disk with no server and no network
(``file:///.../report.html``): inline CSS, figures as base64 PNG ``data:`` URIs, no script, no
external link. Text (titles, notes, facts, table cells) is always HTML-escaped; only a section's
``intro_html``, written by the analysis itself, is markup.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml

__all__ = ["CSS", "MISSING_VALUE", "Figure", "Table", "missing_section", "page", "section", "section_dataset", "table_html"]

MISSING_VALUE = "—"
"""How a missing or non-finite table value is shown."""
PARAMETERS_ID = "parameters"

_SECTION_ID = re.compile(r"[A-Za-z][\w-]*")
_OPENING_TAG = re.compile(r"<section\b([^>]*)>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r'([\w-]+)="([^"]*)"')

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:1.1em;margin:1.4em 0 .3em}
.meta,ul.facts{color:#555;font-size:.92em}
nav a,p.contents a{margin-right:1em}p.contents{font-size:.92em}
table.cellsynth-table{border-collapse:collapse;font-size:.86em;margin:.6em 0;display:block;overflow-x:auto}
table.cellsynth-table th,table.cellsynth-table td{border:1px solid #d5d5d5;padding:.3em .55em;text-align:right;
white-space:nowrap}
table.cellsynth-table th{background:#f1f3f6}
table.cellsynth-table .label{text-align:left}
table.cellsynth-table tr:nth-child(even) td{background:#fafafa}
.note{color:#555;font-size:.85em;margin:.2em 0}
p.missing{background:#fff8e5;border-left:4px solid #e0a800;padding:.6em .9em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #e3e3e3}
figcaption{color:#555;font-size:.85em}
pre{background:#f6f8fa;padding:.8em;font-size:.8em;overflow-x:auto;border:1px solid #e3e3e3}
"""


@dataclass(frozen=True)
class Table:
    """A table of a section: its title, the table itself, and notes printed under it."""

    title: str
    frame: pd.DataFrame
    notes: Sequence[str] = ()
    anchor: str = ""
    """Element id of the table's title (listed in the section's contents); also the file stem of its csv."""
    label_columns: int = 1
    """Leading columns holding labels (left-aligned); the others hold values (right-aligned)."""
    float_format: str = ".4g"
    """Format spec of float cells (text cells, e.g. ``"0.41 ± 0.02"``, are shown as they are)."""


@dataclass(frozen=True)
class Figure:
    """A figure of a section: its title, PNG bytes, and a caption."""

    title: str
    png: bytes
    caption: str = ""
    name: str = ""
    """File stem when the figure is saved on its own; also its element id (listed in the section's contents)."""


def _escape(value: Any) -> str:
    return html.escape(str(value))


def _cell(value: Any, float_format: str) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        return format(value, float_format) if np.isfinite(value) else MISSING_VALUE
    if value is None or value is pd.NA or value is pd.NaT:
        return MISSING_VALUE
    return str(value)


def table_html(item: Table) -> str:
    """One table as HTML: its title (with the anchor), the cells escaped, the notes under it."""
    def tag(name: str, column: int, text: str) -> str:
        label = ' class="label"' if column < item.label_columns else ""
        return f"<{name}{label}>{_escape(text)}</{name}>"

    head = "".join(tag("th", i, c) for i, c in enumerate(item.frame.columns))
    rows = "".join(
        "<tr>" + "".join(tag("td", i, _cell(v, item.float_format)) for i, v in enumerate(row)) + "</tr>"
        for row in item.frame.itertuples(index=False, name=None)
    )
    anchor = f' id="{_escape(item.anchor)}"' if item.anchor else ""
    notes = "".join(f'<p class="note">{_escape(n)}</p>' for n in item.notes)
    return (f"<h3{anchor}>{_escape(item.title)}</h3>\n"
            f'<table class="cellsynth-table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>\n{notes}')


def _figure_html(item: Figure) -> str:
    data = base64.b64encode(item.png).decode("ascii")
    ident = f' id="{_escape(item.name)}"' if item.name else ""
    caption = f"<figcaption>{_escape(item.caption)}</figcaption>" if item.caption else ""
    return (f"<figure{ident}><h3>{_escape(item.title)}</h3>"
            f'<img alt="{_escape(item.title)}" src="data:image/png;base64,{data}">{caption}</figure>')


def _links(targets: Sequence[tuple[str, str]]) -> str:
    return "".join(f'<a href="#{_escape(ident)}">{_escape(text)}</a>' for ident, text in targets)


def _opening_tag(section_id: str, title: str, dataset: str | None, classes: str = "cellsynth-section") -> str:
    if not _SECTION_ID.fullmatch(section_id) or section_id == PARAMETERS_ID:
        raise ValueError(f"section id {section_id!r}: letters, digits, '_' or '-' (starting with a letter), "
                         f"not {PARAMETERS_ID!r}")
    attributes = {"id": section_id, "class": classes, "data-section": section_id, "data-title": title}
    if dataset is not None:
        attributes["data-dataset"] = dataset
    return "<section " + " ".join(f'{k}="{_escape(v)}"' for k, v in attributes.items()) + ">"


def section(
    section_id: str,
    title: str,
    *,
    dataset: str,
    tables: Sequence[Table] = (),
    figures: Sequence[Figure] = (),
    facts: Sequence[str] = (),
    intro_html: str = "",
) -> str:
    """One analysis' part of the report, as a self-contained ``<section>`` fragment.

    In order: the title (``<h2>``), the facts (a list), links to the tables with an ``anchor`` and the
    figures with a ``name``, ``intro_html`` (markup, not escaped: e.g. how to read the section), the
    tables and the figures (base64 PNG ``data:`` URIs). The opening tag carries ``id`` and
    ``data-section`` (``section_id``), ``data-title`` and ``data-dataset`` (see :func:`section_dataset`).
    """
    facts_html = "".join(f"<li>{_escape(line)}</li>" for line in facts)
    contents = _links([(t.anchor, t.title) for t in tables if t.anchor] + [(f.name, f.title) for f in figures if f.name])
    parts = [
        _opening_tag(section_id, title, dataset),
        f"<h2>{_escape(title)}</h2>",
        f'<ul class="facts">{facts_html}</ul>' if facts_html else "",
        f'<p class="contents">{contents}</p>' if contents else "",
        intro_html.strip(),
        *(table_html(t) for t in tables),
        *(_figure_html(f) for f in figures),
        "</section>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def missing_section(section_id: str, title: str, reason: str, *, dataset: str | None = None) -> str:
    """A section saying plainly that its analysis was not computed, and why (``reason``: what to do instead)."""
    return "\n".join([
        _opening_tag(section_id, title, dataset, classes="cellsynth-section cellsynth-missing"),
        f"<h2>{_escape(title)}</h2>",
        f'<p class="missing"><b>Not computed.</b> {_escape(reason)}</p>',
        "</section>",
    ]) + "\n"


def _section_attributes(fragment: str) -> dict[str, str]:
    """Attributes of the fragment's first ``<section>`` tag (unescaped); empty without one."""
    found = _OPENING_TAG.search(fragment)
    if not found:
        return {}
    return {k.lower(): html.unescape(v) for k, v in _ATTRIBUTE.findall(found.group(1))}


def section_dataset(fragment: str) -> str | None:
    """The dataset a section fragment was built for (its ``data-dataset``), or ``None`` when it names none."""
    return _section_attributes(fragment).get("data-dataset")


def page(
    *,
    title: str,
    sections: Sequence[str],
    parameters: Mapping[str, Any],
    summary_lines: Sequence[str] = (),
    generated: str | None = None,
) -> str:
    """The report: one self-contained HTML document (UTF-8; no script; every image a ``data:`` URI).

    Parameters
    ----------
    title : str
        Page title and ``<h1>``.
    sections : sequence of str
        Fragments from :func:`section` / :func:`missing_section`, in order; empty ones are left out.
        The navigation bar links each section by its ``id`` and ``data-title``.
    parameters : mapping
        The run's parameters, shown as YAML at the end.
    summary_lines : sequence of str
        Short facts shown under the title.
    generated : str, optional
        Timestamp text (default: now, UTC).
    """
    generated = generated or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    fragments = [s.strip() for s in sections if s.strip()]
    targets = []
    for fragment in fragments:
        attributes = _section_attributes(fragment)
        ident = attributes.get("id")
        if not ident:
            continue
        if ident in {PARAMETERS_ID, *(t[0] for t in targets)}:
            raise ValueError(f"two sections of the report have the id {ident!r}")
        targets.append((ident, attributes.get("data-title") or ident))
    facts = "".join(f"<li>{_escape(line)}</li>" for line in summary_lines)
    params = yaml.safe_dump(_plain(parameters), sort_keys=False, allow_unicode=True, default_flow_style=False)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_escape(title)}</h1>",
        f'<p class="meta">Generated {_escape(generated)}</p>',
        f'<ul class="meta">{facts}</ul>' if facts else "",
        f"<nav>{_links([*targets, (PARAMETERS_ID, 'Parameters')])}</nav>",
        *fragments,
        f'<section id="{PARAMETERS_ID}"><h2>Parameters of the run</h2>',
        f"<pre>{_escape(params)}</pre></section>",
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
