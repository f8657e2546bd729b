"""Fold summaries and the report's tables (laid out like the paper's: metrics as rows, sets as columns).

Cells are strings ``mean`` (one fold) or ``mean ± sd`` (over folds); the honest tables add the ratio
to the floor as ``(×r)``. The numbers behind them are in the long-format metrics table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from cellsynth.evaluation.fair import mean_and_spread
from cellsynth.evaluation.protocol import (
    ALL_TYPES,
    FLOOR,
    HONEST,
    PAPER,
    PAPER_UPSAMPLE,
    RATIO_SUFFIX,
    REAL_GENERATORS,
    REAL_ONLY,
    REAL_TRAIN_VS_TEST,
    RUN,
    SANITY_BASELINES,
    UTILITY,
)

__all__ = [
    "HONEST_METRICS",
    "PUBLISHED_PANCREAS_NOTE",
    "PUBLISHED_TABLE_1_PBMC3K",
    "PUBLISHED_TABLE_3_PANCREAS",
    "TABLE_NOTES",
    "METRIC_LABELS",
    "fair_table",
    "format_value",
    "generator_order",
    "honest_table",
    "paper_table",
    "per_type_table",
    "run_table",
    "summarise",
    "to_markdown",
    "utility_table",
    "utility_verdict",
]

METRIC_LABELS: dict[str, str] = {
    "wd": "WD ↓",
    "cd": "CD ↓",
    "mmd": "MMD ↓",
    "mmd_unbiased": "MMD unbiased ↓",
    "c2st_auc": "C2ST AUC (best 0.5)",
    "precision": "k-NN precision ↑",
    "recall": "k-NN recall ↑",
    "memorization": "memorisation (≈1 ok, ≪1 copies)",
    "memorization_close_fraction": "close-to-train fraction (≈0.05 ok)",
    "accuracy": "Accuracy ↑",
    "precision_macro": "Precision (macro) ↑",
    "recall_macro": "Recall (macro) ↑",
    "f1_macro": "F1 (macro) ↑",
    "precision_weighted": "Precision (weighted) ↑",
    "recall_weighted": "Recall (weighted) ↑",
    "f1_weighted": "F1 (weighted) ↑",
}
PUBLISHED_TABLE_1_PBMC3K = pd.DataFrame(
    {
        "metric": ["WD ↓", "CD ↓", "MMD ↓"],
        "Original train vs test": ["0.45406", "0.06149", "0.003416"],
        "MOE-FB": ["0.40528", "0.07874", "0.030967"],
        "MAF-FB": ["0.55452", "0.08153", "0.02216"],
        "ACTIVA": ["0.91830", "0.32516", "0.105935"],
        "CTGAN": ["0.44015", "0.08144", "0.060532"],
        "TVAE": ["1.24546", "0.32843", "0.325968"],
        "GC": ["11.72473", "0.11055", "0.084370"],
    }
)
"""The seed paper's Table 1 (PBMC3K) as published, for comparison with :func:`paper_table`."""
PUBLISHED_TABLE_3_PANCREAS = pd.DataFrame(
    {
        "metric": ["WD ↓", "CD ↓", "MMD ↓", "Precision ↑", "Recall ↑", "F1 ↑"],
        "Original train vs test": ["0.13731", "0.01766", "0.000515", "0.8203", "0.7819", "0.7984"],
        "MOE-FB": ["0.59546", "0.07132", "0.003618", "0.9221", "0.8935", "0.9014"],
        "MAF-FB": ["0.62089", "0.06762", "0.002707", "0.8905", "0.8903", "0.8837"],
        "CTGAN": ["0.60276", "0.07760", "0.00431", "0.8900", "0.8551", "0.8667"],
        "TVAE": ["0.70711", "0.09673", "0.005857", "0.9057", "0.8316", "0.8549"],
        "GC": ["0.77126", "0.12429", "0.002447", "0.8469", "0.8068", "0.8208"],
    }
)
"""The seed paper's Table 3 (integrated pancreas, 5-fold average) as published, for comparison with
:func:`utility_table` (the paper does not say whether precision / recall / F1 are macro or weighted)."""
PUBLISHED_PANCREAS_NOTE = (
    "The paper's data is not ours: its integrated pancreas holds four studies (Baron, Muraro, Segerstolpe, Xin; "
    "14,333 cells, 3,000 HVGs, scran normalisation, types under 10 cells removed, one model per minority type); "
    "cellsynth's pancreas runs hold Baron alone (pancreas_baron) or Baron + a 2,000-gene Segerstolpe file "
    "(pancreas_integrated), since Muraro and Xin have no raw-count copy here. Compare orders and gaps, not values."
)
HONEST_METRICS = ("wd", "cd", "mmd", "mmd_unbiased", "c2st_auc", "precision", "recall", "memorization",
                  "memorization_close_fraction")
PER_TYPE_METRICS = ("wd", "cd", "mmd", "c2st_auc", "precision", "recall", "memorization")
UTILITY_METRICS = ("precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted",
                   "f1_weighted", "accuracy")
SUMMARY_KEY = ["dataset", "generator", "protocol", "cell_type", "metric"]

TABLE_NOTES = {
    "paper": [
        "Protocol 'paper': each set vs all test cells, in the PCA-50 reference space (lower is better).",
        "'real train vs test' is the paper's baseline column; the training cells are in-sample for the PCA, "
        "so it is not a floor. 'real (B vs A floor)' is the honest floor (half B vs half A of the test cells; "
        "half-size sets, so its MMD carries a larger size bias than the other columns).",
        "(sanity) marks reference generators with a known answer.",
    ],
    "utility": [
        "Distribution rows: protocol 'paper_upsample', (real training cells + the generator's up-sampling cells) "
        "vs the test cells; the first column is the training cells alone.",
        "Classification rows: random forest (entropy, seeded) on HVG expression trained on real training cells "
        "('real only', first column) or real + the generator's up-sampling cells; scored on the test cells.",
    ],
    "verdict": [
        "Realistic: fair detection AUC above the floor's (number: the excess). Structure kept: within-type "
        "detection and gene–gene correlation preservation (number: correlation r ÷ the floor's). Diverse: k-NN "
        "recall ÷ the floor's. Not copying: memorisation score (≈1 healthy, 0 = copies). Useful: mean per-type "
        "F1 uplift over real-only (types with enough test cells). ✗ only when a shortfall is beyond the "
        "threshold and beyond spread_factor (default 2) × its uncertainty (with several folds the standard error of the per-fold "
        "difference from the floor, with one the sd over the repeated splits); – = not computable (see data/08_reporting/<dataset>/verdict.csv for why, the "
        "numbers and the thresholds). Sanity baselines are marked and never named best.",
    ],
    "fair": [
        "Protocol 'fair': per comparison, StandardScaler + PCA fitted on half A ∪ the compared set (both "
        "in-sample); halves A/B redrawn with seeds seed, seed+1, ...: mean ± sd over these repeats (with "
        "several folds: fold mean ± sd). Exact duplicate cells are counted and dropped before the realism "
        "metrics. Memorisation: distances to the nearest training cell in a space fitted on half A only, "
        "relative to half B. Within-type: detection of residuals (cells minus the training cells' type means) "
        "and scDesign3's correlation preservation (top-100 genes per type). Counts: KS distances of raw-count "
        "summaries, only for generators whose cells carry layers['counts'].",
    ],
    "honest": [
        "Protocol 'honest': reference = half A of the test cells; floor = half B; each generator contributes |B| "
        "cells (B's type counts where it has the types). (×r) = ratio to the floor of the same fold (×1 = as "
        "good as real data).",
        "(floor ≤ 0): no ratio, the floor's value is not positive (an unbiased estimate of a zero distance "
        "can be negative), so a ratio to it would mean nothing.",
    ],
    "per_type": [
        "Honest protocol within each cell type with enough cells on both sides; ratios to that type's floor.",
    ],
}
"""Notes printed under each table (markdown files and the report)."""


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Fold mean and sample sd of every (dataset, generator, protocol, cell type, metric).

    Returns
    -------
    pandas.DataFrame
        ``dataset, generator, protocol, cell_type, metric, mean, sd, n_folds`` (sd NaN for one fold).
    """
    grouped = metrics.groupby(SUMMARY_KEY, sort=False, dropna=False)["value"]
    out = grouped.agg(mean="mean", sd="std", n_folds="count").reset_index()
    out["n_folds"] = out["n_folds"].astype(np.int64)
    return out


def generator_order(names: Iterable[str]) -> list[str]:
    """Real rows first, then the generators in their given order, sanity baselines last."""
    names = list(dict.fromkeys(names))
    real = [g for g in REAL_GENERATORS if g in names]
    baselines = [g for g in SANITY_BASELINES if g in names]
    models = [g for g in names if g not in real and g not in baselines]
    return real + models + baselines


def column_label(generator: str) -> str:
    """Table header of a generator (sanity baselines are marked)."""
    return f"{generator} (sanity)" if generator in SANITY_BASELINES else generator


def format_value(mean: float, sd: float = float("nan"), n_folds: int = 1) -> str:
    """``"0.4541"`` or ``"0.4541 ± 0.012"``; ``"—"`` for a missing value."""
    if mean is None or not math.isfinite(mean):
        return "—" if mean is None or math.isnan(mean) else str(mean)
    text = f"{mean:.1f}" if abs(mean) >= 1000 else f"{mean:.4g}"
    if n_folds > 1 and sd is not None and math.isfinite(sd):
        text += f" ± {sd:.2g}"
    return text


def _cells(summary: pd.DataFrame) -> dict[tuple[str, str, str, str], str]:
    """``(generator, protocol, cell_type, metric) -> formatted mean ± sd``."""
    return {
        (r.generator, r.protocol, r.cell_type, r.metric): format_value(r.mean, r.sd, r.n_folds)
        for r in summary.itertuples(index=False)
    }


def _means(summary: pd.DataFrame) -> dict[tuple[str, str, str, str], float]:
    return {(r.generator, r.protocol, r.cell_type, r.metric): r.mean for r in summary.itertuples(index=False)}


def _model_generators(metrics: pd.DataFrame) -> list[str]:
    return [g for g in generator_order(metrics["generator"]) if g not in REAL_GENERATORS]


def _single_dataset(metrics: pd.DataFrame) -> pd.DataFrame:
    datasets = metrics["dataset"].unique()
    if len(datasets) > 1:
        raise ValueError(f"tables are per dataset; got {list(datasets)}")
    return metrics


def paper_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1: WD, CD, MMD of each set against the test cells (protocol ``paper``).

    Columns: ``metric``, ``real train vs test`` (the paper's baseline column), ``real (B vs A floor)``
    (the honest floor, B vs A, for reference: half-size sets, so its MMD carries a larger size bias),
    then one column per generator (sanity baselines marked).
    """
    summary = summarise(_single_dataset(metrics))
    cells = _cells(summary)
    generators = _model_generators(metrics)
    rows = []
    for metric in ("wd", "cd", "mmd"):
        row = {"metric": METRIC_LABELS[metric],
               REAL_TRAIN_VS_TEST: cells.get((REAL_TRAIN_VS_TEST, PAPER, ALL_TYPES, metric), "—"),
               FLOOR: cells.get((FLOOR, HONEST, ALL_TYPES, metric), "—")}
        row.update({column_label(g): cells.get((g, PAPER, ALL_TYPES, metric), "—") for g in generators})
        rows.append(row)
    return pd.DataFrame(rows)


def utility_table(metrics: pd.DataFrame, min_support: int = 10) -> pd.DataFrame:
    """The paper's Table 3: (real training + upsample cells) vs test, and the random forest's scores.

    Each per-type F1 row shows its test support n (fold mean); types with fewer than ``min_support``
    test cells are marked "not in the verdict" (their F1 rests on a handful of cells).

    Rows WD, CD, MMD (protocol ``paper_upsample``), macro and weighted precision / recall / F1,
    accuracy, then F1 of every cell type. Columns: ``real train vs test / real only`` (the paper's
    "Original" column: training cells alone), ``real (B vs A floor)`` (distribution rows only), then
    one column per generator (training cells + that generator's up-sampling cells).
    """
    summary = summarise(_single_dataset(metrics))
    cells = _cells(summary)
    generators = _model_generators(metrics)
    real_column = f"{REAL_TRAIN_VS_TEST} / {REAL_ONLY}"
    rows = []
    for metric in ("wd", "cd", "mmd"):
        row = {"metric": METRIC_LABELS[metric],
               real_column: cells.get((REAL_TRAIN_VS_TEST, PAPER_UPSAMPLE, ALL_TYPES, metric), "—"),
               FLOOR: cells.get((FLOOR, HONEST, ALL_TYPES, metric), "—")}
        row.update({column_label(g): cells.get((g, PAPER_UPSAMPLE, ALL_TYPES, metric), "—") for g in generators})
        rows.append(row)
    types = sorted(summary.loc[(summary["protocol"] == UTILITY) & (summary["metric"] == "f1")
                               & (summary["cell_type"] != ALL_TYPES), "cell_type"].unique())
    means = _means(summary)

    def type_label(cell_type: str) -> str:
        support = means.get((REAL_ONLY, UTILITY, cell_type, "support"))
        if support is None or not math.isfinite(support):
            return f"F1 [{cell_type}] ↑"
        small = "; not in the verdict" if support < min_support else ""
        return f"F1 [{cell_type}] (n = {support:.0f}{small}) ↑"

    for metric, cell_type, label in [(m, ALL_TYPES, METRIC_LABELS[m]) for m in UTILITY_METRICS] + [
        ("f1", t, type_label(t)) for t in types
    ]:
        row = {"metric": label, real_column: cells.get((REAL_ONLY, UTILITY, cell_type, metric), "—"), FLOOR: "—"}
        row.update({column_label(g): cells.get((g, UTILITY, cell_type, metric), "—") for g in generators})
        rows.append(row)
    return pd.DataFrame(rows)


UPSAMPLING_REFERENCE = "smote"
"""The generator every up-sampling result is judged against (what a user would otherwise use)."""


def utility_verdict(metrics: pd.DataFrame, metric: str = "f1_macro") -> str:
    """One sentence on the classification utility: the largest uplift over real-only, and SMOTE.

    The largest uplift is named among the generators that are not sanity baselines.

    The uplift of a generator is its per-fold ``metric`` (protocol ``utility``, all types) minus the
    real-only classifier's of the same fold. A generator beats ``smote`` *beyond the fold-to-fold
    spread* when the mean of its paired per-fold differences to ``smote`` exceeds their sample sd
    (so at least two folds are needed to claim it).
    """
    rows = _single_dataset(metrics)
    rows = rows[(rows["protocol"] == UTILITY) & (rows["cell_type"] == ALL_TYPES) & (rows["metric"] == metric)]
    per_fold = rows.pivot_table(index="fold", columns="generator", values="value", aggfunc="mean")
    label = METRIC_LABELS.get(metric, metric).rstrip(" ↑")
    if REAL_ONLY not in per_fold:
        return f"No real-only {label} was computed, so no uplift can be stated."
    generators = [g for g in generator_order(per_fold.columns) if g not in REAL_GENERATORS]
    if not generators:
        return f"No generator was evaluated for classification utility ({label})."
    uplift = per_fold[generators].sub(per_fold[REAL_ONLY], axis=0)
    n_folds = int(per_fold[REAL_ONLY].notna().sum())
    candidates = [g for g in generators if g not in SANITY_BASELINES]  # a sanity baseline is never named best
    if not candidates:
        return f"Only sanity baselines were evaluated for classification utility ({label}): none is named."
    best = str(uplift[candidates].mean().idxmax())
    spread = f" ± {uplift[best].std():.3f} sd" if n_folds > 1 else ""
    sentence = (f"Largest {label} uplift over real-only ({per_fold[REAL_ONLY].mean():.3f}): {best} "
                f"({uplift[best].mean():+.3f}{spread} over {n_folds} fold{'s' if n_folds != 1 else ''})")
    others = [g for g in generators if g != UPSAMPLING_REFERENCE and g not in SANITY_BASELINES]
    if UPSAMPLING_REFERENCE not in per_fold:
        return sentence + f"; {UPSAMPLING_REFERENCE} was not run, so nothing is compared with it."
    if not others:
        return sentence + f"; no trained generator other than {UPSAMPLING_REFERENCE} was evaluated."
    if n_folds < 2:
        return sentence + f"; with one fold there is no spread to judge a difference to {UPSAMPLING_REFERENCE} against."
    difference = per_fold[others].sub(per_fold[UPSAMPLING_REFERENCE], axis=0)
    winners = [g for g in others if difference[g].mean() > difference[g].std()]
    if winners:
        detail = ", ".join(f"{g} ({difference[g].mean():+.3f} ± {difference[g].std():.3f})" for g in winners)
        return sentence + f"; beats {UPSAMPLING_REFERENCE} beyond the fold-to-fold spread: {detail}."
    closest = str(difference.mean().idxmax())
    return (sentence + f"; no trained generator beats {UPSAMPLING_REFERENCE} beyond the fold-to-fold spread "
            f"(closest: {closest}, {difference[closest].mean():+.3f} ± {difference[closest].std():.3f}).")


FAIR_TABLE_ROWS = (
    ("fair", "c2st_auc", "detection AUC (best: the floor's)"),
    ("fair", "wd", "WD ↓"),
    ("fair", "mmd", "MMD ↓"),
    ("fair", "precision", "k-NN precision ↑"),
    ("fair", "recall", "k-NN recall ↑"),
    ("within_type", "c2st_auc", "within-type detection AUC (best: the floor's)"),
    ("within_type", "correlation_r", "gene–gene correlation r ↑ (scDesign3)"),
    ("fair", "memorization", "memorisation (≈1 ok, ≪1 copies)"),
    ("fair", "memorization_close_fraction", "close-to-train fraction (≈0.05 ok)"),
    ("fair", "duplicate_fraction", "exact duplicate cells"),
    ("counts", "ks_library_size", "KS library size ↓"),
    ("counts", "ks_detected_genes", "KS detected genes ↓"),
    ("counts", "ks_gene_mean", "KS gene mean ↓"),
    ("counts", "ks_gene_variance", "KS gene variance ↓"),
    ("counts", "ks_gene_detection", "KS gene detection rate ↓"),
)


def fair_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The fair protocol (and within-type structure, count realism): ``mean ± spread`` per set.

    Spread: the sd over folds with several folds, else the sd over the repeated honest splits.
    Columns: ``metric``, the floor, then one per generator; a generator without count rows reads
    "skipped: no counts", the floor's memorisation "— (B is the holdout)".
    """
    metrics = _single_dataset(metrics)
    generators = [FLOOR, *_model_generators(metrics[metrics["protocol"] == "fair"])]
    has_counts = set(metrics.loc[metrics["protocol"] == "counts", "generator"])
    rows = []
    for protocol, metric, label in FAIR_TABLE_ROWS:
        if not ((metrics["protocol"] == protocol) & (metrics["metric"] == metric)).any() and protocol != "counts":
            continue
        row = {"metric": label}
        for generator in generators:
            mean, sd = mean_and_spread(metrics, generator, protocol, metric)
            if protocol == "counts" and generator not in has_counts:
                text = "skipped: no counts"
            elif generator == FLOOR and metric.startswith("memorization"):
                text = "— (B is the holdout)"
            elif not math.isfinite(mean):
                text = "— (too few cells)"
            else:
                text = f"{mean:.3f}" + (f" ± {sd:.3f}" if math.isfinite(sd) else "")
            row[column_label(generator)] = text
        rows.append(row)
    return pd.DataFrame(rows)


def _with_ratio(cells, means, generator: str, cell_type: str, metric: str) -> str:
    value = cells.get((generator, HONEST, cell_type, metric))
    if value is None:
        return "—"
    ratio = means.get((generator, HONEST, cell_type, metric + RATIO_SUFFIX))
    if ratio is None or not math.isfinite(ratio):
        floor = means.get((FLOOR, HONEST, cell_type, metric))
        if floor is not None and math.isfinite(floor) and floor <= 0:
            return f"{value} (floor ≤ 0)"  # an unbiased estimate of a zero distance can be negative
        return value
    return f"{value} (×{ratio:.2f})"


def honest_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The honest protocol: every metric against half A, with its ratio to the floor ``(×r)``.

    Columns: ``metric``, ``real (B vs A floor)``, then one column per generator. Ratios are fold
    means of the per-fold ratios.
    """
    summary = summarise(_single_dataset(metrics))
    cells, means = _cells(summary), _means(summary)
    columns = [FLOOR, *_model_generators(metrics)]
    present = set(summary.loc[summary["protocol"] == HONEST, "metric"])
    rows = []
    for metric in [m for m in HONEST_METRICS if m in present]:
        row = {"metric": METRIC_LABELS[metric]}
        row.update({column_label(g): _with_ratio(cells, means, g, ALL_TYPES, metric) for g in columns})
        rows.append(row)
    return pd.DataFrame(rows)


def per_type_table(metrics: pd.DataFrame, metrics_shown: Sequence[str] = PER_TYPE_METRICS) -> pd.DataFrame:
    """Honest protocol within each cell type (types with enough cells), with ratios to that type's floor.

    Columns: ``cell_type``, ``metric``, ``real (B vs A floor)``, then one per generator; ``—`` where a
    generator has too few cells of the type.
    """
    summary = summarise(_single_dataset(metrics))
    cells, means = _cells(summary), _means(summary)
    columns = [FLOOR, *_model_generators(metrics)]
    honest = summary[(summary["protocol"] == HONEST) & (summary["cell_type"] != ALL_TYPES)]
    rows = []
    for cell_type in sorted(honest["cell_type"].unique()):
        for metric in metrics_shown:
            if not ((honest["cell_type"] == cell_type) & (honest["metric"] == metric)).any():
                continue
            row = {"cell_type": cell_type, "metric": METRIC_LABELS[metric]}
            row.update({column_label(g): _with_ratio(cells, means, g, cell_type, metric) for g in columns})
            rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["cell_type", "metric"])


def _escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """A GitHub-flavoured markdown table (with an optional ``## title`` and notes under it)."""
    lines = [f"## {title}", ""] if title else []
    header = [_escape(c) for c in table.columns]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for record in table.itertuples(index=False):
        lines.append("| " + " | ".join(_escape(v) for v in record) + " |")
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines) + "\n"


RUN_METRICS = ("fit_seconds", "sample_seconds", "epochs_run", "peak_rss_gib_fit", "nonfinite_cells_synthetic")


def run_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Generator bookkeeping (protocol ``run``): fit and sampling time, epochs, peak memory, cells with
    non-finite values (fold mean ± sd)."""
    summary = summarise(_single_dataset(metrics))
    cells = _cells(summary)
    run = summary[summary["protocol"] == RUN]
    rows = []
    for generator in generator_order(run["generator"]):
        row = {"generator": column_label(generator)}
        row.update({m: cells.get((generator, RUN, ALL_TYPES, m), "—") for m in RUN_METRICS})
        rows.append(row)
    return pd.DataFrame(rows, columns=["generator", *RUN_METRICS])
