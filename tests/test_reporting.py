"""The one HTML builder of the report (cellsynth.reporting): sections, the page, tables, figures, PNG helpers."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from cellsynth.reporting.figures import figure_to_image, figure_to_png, grid_shape, image_to_png, new_figure
from cellsynth.reporting.html import Figure, Table, missing_section, page, section, section_dataset

PNG = b"\x89PNG\r\n\x1a\nfake"
HOSTILE = '<script>alert("x")</script> & co'


def _sections() -> list[str]:
    first = section(
        "evaluation", "Evaluation <of> generators", dataset="pbmc3k",
        tables=[Table("Table 1", pd.DataFrame({"metric": ["WD ↓"], "maf": ["0.41 ± 0.02"]}), ["a note"], "table1")],
        figures=[Figure("bars", PNG, "a caption", "bars")],
        facts=["Folds: 0"], intro_html="<p>How to read this</p>",
    )
    second = missing_section("downstream", "Downstream biology", "batch-corrected cells; run it on one dataset",
                             dataset="pbmc3k")
    return [first, "", second]


def test_page_is_one_self_contained_document_with_a_nav_of_its_sections():
    text = page(title="cellsynth report: pbmc3k", sections=_sections(),
                parameters={"evaluation": {"seed": 0}, "path": re.compile("x")}, summary_lines=["one fact"],
                generated="2025-01-01 00:00 UTC")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</body></html>")
    assert text.count("<html") == 1 and text.count("<style>") == 1 and text.count("<h1>") == 1
    assert "<script" not in text.lower() and "http" not in text
    sources = re.findall(r'\bsrc="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    nav = re.search(r"<nav>(.*?)</nav>", text).group(1)
    assert re.findall(r'href="#([^"]+)"', nav) == ["evaluation", "downstream", "parameters"]
    assert ">Evaluation &lt;of&gt; generators</a>" in nav and ">Downstream biology</a>" in nav
    # the sections in order, the parameters (as YAML) last
    positions = [text.index(f'<section id="{i}"') for i in ("evaluation", "downstream", "parameters")]
    assert positions == sorted(positions)
    assert "seed: 0" in text[positions[-1]:] and "<li>one fact</li>" in text[:positions[0]]
    # the section lists its anchored tables and named figures
    assert '<a href="#table1">Table 1</a><a href="#bars">bars</a>' in text and 'id="table1"' in text


def test_text_is_escaped_everywhere_but_the_intro():
    frame = pd.DataFrame({HOSTILE: [HOSTILE], "value": [1.0]})
    fragment = section("s1", HOSTILE, dataset=HOSTILE, tables=[Table(HOSTILE, frame, [HOSTILE], anchor="t")],
                       figures=[Figure(HOSTILE, PNG, HOSTILE)], facts=[HOSTILE], intro_html="<p>kept <b>bold</b></p>")
    text = page(title=HOSTILE, sections=[fragment], parameters={"note": HOSTILE})
    assert "<script" not in text and "&lt;script&gt;" in text
    assert '"x"' not in text.replace("<b>", "")  # quotes are escaped too (attributes stay closed)
    assert "<p>kept <b>bold</b></p>" in text
    assert section_dataset(fragment) == HOSTILE


def test_table_cells_formats_and_label_columns():
    frame = pd.DataFrame({"type": ["B", "NK"], "kind": ["real", "synthetic"], "x": [0.123456, np.nan],
                          "y": [np.inf, 2.0], "n": [3, 4], "ok": [True, False]})
    text = section("t", "T", dataset="d", tables=[Table("tab", frame, label_columns=2),
                                                  Table("fixed", frame[["x"]], float_format=".2f")])
    first, second = re.findall(r"<table.*?</table>", text)
    assert "<td>0.1235</td>" in first and first.count("<td>—</td>") == 2  # NaN and inf
    assert "<td>3</td>" in first and "<td>True</td>" in first and "<td>False</td>" in first
    assert first.count('<th class="label">') == 2 and first.count('<td class="label">') == 4
    assert "<td class=\"label\">0.12</td>" in second  # one column: it is the label column


def test_missing_section_says_it_was_not_computed_and_why():
    text = missing_section("downstream", "Downstream biology", "the cells were batch-corrected; run with method none")
    assert text.startswith('<section id="downstream"') and text.rstrip().endswith("</section>")
    assert "Not computed." in text and "run with method none" in text and "<h2>Downstream biology</h2>" in text
    assert section_dataset(text) is None
    assert section_dataset(missing_section("a", "A", "why", dataset="pbmc3k")) == "pbmc3k"


def test_section_dataset_round_trips_and_reads_only_the_section_tag():
    for name in ("pbmc3k", "tabula & <muris>", 'a "quoted" name', ""):
        assert section_dataset(section("s", "S", dataset=name)) == name
    assert section_dataset("<p>no section</p>") is None
    assert section_dataset('<section id="old">\n<p data-dataset="other"></p></section>') is None
    assert section_dataset('<section id="integration" data-dataset="pbmc3k">') == "pbmc3k"  # an older fragment


def test_ids_are_checked_and_empty_sections_left_out():
    with pytest.raises(ValueError, match="section id"):
        section("two words", "T", dataset="d")
    with pytest.raises(ValueError, match="section id"):
        section("parameters", "T", dataset="d")
    twice = section("a", "A", dataset="d")
    with pytest.raises(ValueError, match="'a'"):
        page(title="t", sections=[twice, twice], parameters={})
    text = page(title="t", sections=["", "  \n"], parameters={})
    assert "<section" in text and text.count("<section") == 1  # only the parameters


def test_png_helpers():
    assert grid_shape(5) == (2, 4) and grid_shape(0) == (1, 1) and grid_shape(3, max_columns=2) == (2, 2)
    fig = new_figure(2, 1.5)
    fig.add_subplot().plot([0, 1], [1, 0])
    png = figure_to_png(fig, dpi=40)
    assert png[:8] == PNG[:8]
    image = figure_to_image(fig, dpi=40)
    assert image.size == (80, 60) and image_to_png(image)[:8] == PNG[:8]
    assert figure_to_png(fig, dpi=40, tight=True) != png
