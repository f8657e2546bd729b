"""What a catalog entry's data becomes in MLflow: parameters and metric rows ``(key, value, step)``.

A catalog entry opts in with ``metadata: {mlflow: {...}}`` (see ``conf/base/catalog*.yml``):
``params: <name>`` and ``metrics: <name>`` pick a converter below by name, ``artifact: <folder>``
logs the saved file (or model folder) under that artifact folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd

from cellsynth.schema import ALL_TYPES, REAL_ROWS

MetricRows = Iterable[tuple[str, float, int]]


def _generation_params(record: Mapping[str, Any]) -> dict[str, Any]:
    return dict(record["params"])


def _generation_metrics(record: Mapping[str, Any]) -> MetricRows:
    return [(key, value, 0) for key, value in record["timings"].items()]


def _training_history(history: pd.DataFrame) -> MetricRows:
    return [(r.series, r.value, r.epoch) for r in history.itertuples(index=False)]


def key_part(name: str) -> str:
    """A cell-type (or other) name as one stable metric-key part: ``CD14+ Mono`` → ``CD14plus_Mono``.

    ``+`` and ``-`` carry meaning in marker-defined type names (CD14+ vs CD14-), so they become words;
    runs of anything else MLflow or a column header handles badly become one ``_``.
    """
    text = str(name).replace("+", "plus").replace("-", "minus")
    return re.sub(r"[^0-9A-Za-z_.]+", "_", text).strip("_") or "_"


#: The short, stable set of metrics each generator × fold run carries at the top level, so the MLflow
#: runs table compares generators in a few columns: ``key: (protocol, metric)`` of its overall rows.
#: (The ratios to the floor exist only once the evaluation collects every fold: the parent run has them,
#: see :func:`_ratios_by_generator`.)
HEADLINE_METRICS = {
    "c2st": ("honest", "c2st_auc"),
    "wd": ("honest", "wd"),
    "mmd": ("honest", "mmd"),
    "precision": ("honest", "precision"),
    "recall": ("honest", "recall"),
    "memorisation": ("honest", "memorization"),
    "f1_macro": ("utility", "f1_macro"),
    "accuracy": ("utility", "accuracy"),
}
#: ``run`` rows repeat what the generation run already logged (``fit_seconds``, ...): not logged again.
_LOGGED_BY_GENERATION = "run"


def _headline(frame: pd.DataFrame) -> MetricRows:
    overall = frame[frame["cell_type"] == ALL_TYPES].set_index(["protocol", "metric"])["value"]
    return [(key, float(overall[where]), 0) for key, where in HEADLINE_METRICS.items() if where in overall.index]


def _long_metrics(frame: pd.DataFrame) -> MetricRows:
    """Rows of one generator × fold: ``eval/<protocol>/<metric>[/<cell type>]`` (type names by :func:`key_part`)."""
    frame = frame[frame["protocol"] != _LOGGED_BY_GENERATION]
    return [("/".join(["eval", r.protocol, r.metric] + ([] if r.cell_type == ALL_TYPES else [key_part(r.cell_type)])),
             r.value, 0) for r in frame.itertuples(index=False)]


def _ratios_by_generator(frame: pd.DataFrame) -> MetricRows:
    """The parent run's comparison of generators: ``x_floor/<generator>/<metric>`` (honest, all types, step
    = fold), the one thing the generator runs cannot hold (the floor is a fold-level result)."""
    suffix = "_ratio_to_floor"
    rows = frame[(frame["cell_type"] == ALL_TYPES) & (frame["protocol"] == "honest")
                 & frame["metric"].str.endswith(suffix) & ~frame["generator"].isin(REAL_ROWS)]
    return [(f"x_floor/{key_part(r.generator)}/{r.metric[: -len(suffix)]}", r.value, r.fold)
            for r in rows.itertuples(index=False)]


def _evaluation_of_generator(frame: pd.DataFrame) -> MetricRows:
    """A generator × fold's evaluation rows: the :data:`HEADLINE_METRICS` it holds, then every row in full."""
    return [*_headline(frame), *_long_metrics(frame)]


_VERDICT_QUESTIONS = ("realistic", "structure", "diverse", "not_copying", "useful")


def _verdict(frame: pd.DataFrame) -> MetricRows:
    """One generator × fold verdict row: ``verdict/<question>`` (1 ✓, 0 ✗; absent when not computable)
    and ``verdict/<question>_value`` (the number the call was made on)."""
    rows: list[tuple[str, float, int]] = []
    for record in frame.to_dict("records"):
        for question in _VERDICT_QUESTIONS:
            mark = str(record.get(question, ""))
            if mark in ("✓", "✗"):
                rows.append((f"verdict/{question}", 1.0 if mark == "✓" else 0.0, 0))
            value = pd.to_numeric(record.get(f"{question}_value"), errors="coerce")
            if pd.notna(value):
                rows.append((f"verdict/{question}_value", float(value), 0))
    return rows


_MARKER_SUMMARY = ("jaccard_top", "unique_recovered", "logfc_spearman")
_INTERACTION_SUMMARY = ("rmse", "rmse_shared", "rmse_expressed", "jaccard_significant")


def _cells_kind(cells: str) -> str:
    return "real_plus_synthetic" if cells.startswith("real +") else cells.replace(" ", "_")


def _marker_preservation(frame: pd.DataFrame) -> MetricRows:
    overall = frame[frame["cell_type"] == ALL_TYPES]
    return [(f"downstream/markers/{key}", getattr(r, key), 0) for r in overall.itertuples(index=False)
            for key in _MARKER_SUMMARY]


def _interaction_comparison(frame: pd.DataFrame) -> MetricRows:
    return [(f"downstream/interactions/{_cells_kind(r.cells)}/{key}", getattr(r, key), 0)
            for r in frame.itertuples(index=False) for key in _INTERACTION_SUMMARY]


def _marker_preservation_by_generator(frame: pd.DataFrame) -> MetricRows:
    overall = frame[frame["cell_type"] == ALL_TYPES]
    return [(f"downstream/{r.generator}/marker_jaccard", r.jaccard_top, r.fold) for r in overall.itertuples(index=False)]


def _interactions_by_generator(frame: pd.DataFrame) -> MetricRows:
    return [(f"downstream/{r.generator}/{_cells_kind(r.cells)}/rmse", r.rmse, r.fold)
            for r in frame.itertuples(index=False)]


def _integration_scores(table: pd.DataFrame) -> MetricRows:
    return [(f"integration.{r.metric}_{when}", getattr(r, when), 0)
            for r in table.itertuples(index=False) for when in ("before", "after")]


PARAMS: dict[str, Callable[[Any], dict[str, Any]]] = {"generation_record": _generation_params}
METRICS: dict[str, Callable[[Any], MetricRows]] = {
    "generation_record": _generation_metrics,
    "training_history": _training_history,
    "long_metrics": _long_metrics,
    "verdict": _verdict,
    "evaluation_of_generator": _evaluation_of_generator,
    "ratios_by_generator": _ratios_by_generator,
    "marker_preservation": _marker_preservation,
    "interaction_comparison": _interaction_comparison,
    "marker_preservation_by_generator": _marker_preservation_by_generator,
    "interactions_by_generator": _interactions_by_generator,
    "integration_scores": _integration_scores,
}
