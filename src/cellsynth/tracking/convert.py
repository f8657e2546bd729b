"""What a catalog entry's data becomes in MLflow: parameters and metric rows ``(key, value, step)``.

A catalog entry opts in with ``metadata: {mlflow: {...}}`` (see ``conf/base/catalog*.yml``):
``params: <name>`` and ``metrics: <name>`` pick a converter below by name, ``artifact: <folder>``
logs the saved file (or model folder) under that artifact folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd

from cellsynth.schema import ALL_TYPES

MetricRows = Iterable[tuple[str, float, int]]


def _generation_params(record: Mapping[str, Any]) -> dict[str, Any]:
    return dict(record["params"])


def _generation_metrics(record: Mapping[str, Any]) -> MetricRows:
    return [(key, value, 0) for key, value in record["timings"].items()]


def _training_history(history: pd.DataFrame) -> MetricRows:
    return [(r.series, r.value, r.epoch) for r in history.itertuples(index=False)]


def _long_metrics(frame: pd.DataFrame) -> MetricRows:
    """Rows of one generator × fold: ``eval/<protocol>/<metric>[/<cell type>]``."""
    return [("/".join(["eval", r.protocol, r.metric] + ([] if r.cell_type == ALL_TYPES else [r.cell_type])), r.value, 0)
            for r in frame.itertuples(index=False)]


def _metrics_by_generator(frame: pd.DataFrame) -> MetricRows:
    """Every generator's overall rows, for the parent run: ``eval/<generator>/<protocol>/<metric>`` at step fold."""
    overall = frame[frame["cell_type"] == ALL_TYPES]
    return [(f"eval/{r.generator}/{r.protocol}/{r.metric}", r.value, r.fold) for r in overall.itertuples(index=False)]


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
    "metrics_by_generator": _metrics_by_generator,
    "verdict": _verdict,
    "marker_preservation": _marker_preservation,
    "interaction_comparison": _interaction_comparison,
    "marker_preservation_by_generator": _marker_preservation_by_generator,
    "interactions_by_generator": _interactions_by_generator,
    "integration_scores": _integration_scores,
}
