"""The verdict: one row per generator, one column per question, each ✓/✗ with its number and threshold.

Questions (thresholds: :class:`~cellsynth.config.VerdictSettings`, ``evaluation.verdict``):

- ``realistic``: the fair detection AUC (protocol ``fair``) exceeds the floor's by at most
  ``max_detection_excess``;
- ``structure``: the within-type detection AUC exceeds the floor's by at most
  ``max_within_type_excess`` and the correlation preservation is at least ``min_correlation_ratio``
  × the floor's;
- ``diverse``: k-NN recall at least ``min_recall_ratio`` × the floor's;
- ``not_copying``: memorisation score at least ``min_memorization`` (the close fraction and the
  exact duplicates are shown in the detail: a generator collapsed onto dense regions of the data
  also sits close to training cells without copying them);
- ``useful``: the mean per-type F1 uplift over the real-only classifier, over the types with at
  least ``min_support`` test cells, is positive beyond its spread.

A shortfall is only called (✗) when it also exceeds ``spread_factor`` × its spread. With several folds
the spread is the standard error of the mean over folds (of the fold-paired difference from the floor,
for comparisons with it): a generator that is far from real cells on some folds and close on others
is judged on its mean, not excused by its inconsistency. With one fold it is the sd over the repeated
honest splits (both sets' in quadrature; the repeats share their cells, so no √n).
``–`` means not computable (said why in the detail).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from cellsynth.config import VerdictSettings
from cellsynth.evaluation.fair import FAIR, WITHIN_TYPE, fold_values, mean_and_spread
from cellsynth.schema import ALL_TYPES, FLOOR, REAL_ONLY, REAL_ROWS, SANITY_BASELINES

__all__ = ["PASS", "FAIL", "NOT_COMPUTED", "QUESTIONS", "verdict_display", "verdict_sentence", "verdict_table"]

QUESTIONS = ("realistic", "structure", "diverse", "not_copying", "useful")
QUESTION_LABELS = {"realistic": "Realistic", "structure": "Structure kept", "diverse": "Diverse",
                   "not_copying": "Not copying", "useful": "Useful"}
PASS, FAIL, NOT_COMPUTED = "✓", "✗", "–"


def _spread(*sds: float) -> float:
    return math.sqrt(sum(s * s for s in sds if math.isfinite(s)))


def _standard_error(values: pd.Series) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values)))


def _versus_floor(metrics, generator, protocol, metric) -> tuple[float, float, float, float, float]:
    """``(generator mean, its sd, floor mean, its sd, spread of the difference)`` of a metric; the
    spread is the standard error of the fold-paired differences with several folds, else both repeat
    sds in quadrature."""
    g, g_sd = mean_and_spread(metrics, generator, protocol, metric)
    f, f_sd = mean_and_spread(metrics, FLOOR, protocol, metric)
    differences = (fold_values(metrics, generator, protocol, metric)
                   - fold_values(metrics, FLOOR, protocol, metric)).dropna()
    spread = _standard_error(differences) if len(differences) > 1 else _spread(g_sd, f_sd)
    return g, g_sd, f, f_sd, spread


def _spread_of_mean(metrics, generator, protocol, metric, sd: float) -> float:
    """Spread of a generator's mean: the standard error over folds with several, else its repeat sd."""
    values = fold_values(metrics, generator, protocol, metric)
    return _standard_error(values) if len(values) > 1 else _spread(sd)


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.3f}" if not math.isfinite(sd) else f"{mean:.3f} ± {sd:.3f}"


def _excess_check(metrics, generator, protocol, limit, k, what) -> tuple[bool | None, float, str]:
    """(pass?, excess over the floor, detail) for a detection AUC."""
    g, g_sd, f, f_sd, spread = _versus_floor(metrics, generator, protocol, "c2st_auc")
    if not (math.isfinite(g) and math.isfinite(f)):
        return None, float("nan"), f"{what}: too few cells for a detection test (or no floor)"
    excess = g - f
    failed = excess > limit and excess > k * spread
    return (not failed, excess,
            f"{what} AUC {_pm(g, g_sd)} vs floor {_pm(f, f_sd)}: excess {excess:+.3f} (spread {spread:.3f})")


def _ratio_check(metrics, generator, protocol, metric, minimum, k, what) -> tuple[bool | None, float, str]:
    """(pass?, ratio to the floor, detail) for a higher-is-better metric."""
    g, g_sd, f, f_sd, spread = _versus_floor(metrics, generator, protocol, metric)
    if not (math.isfinite(g) and math.isfinite(f)):
        return None, float("nan"), f"{what}: not computed (too few cells of a type on both sides)"
    if f <= 0:
        return None, float("nan"), (f"{what} {_pm(g, g_sd)}; the floor's is {f:.3f} ≤ 0 (real halves share no "
                                    "measurable signal at this size), so no ratio is defined")
    ratio = g / f
    failed = ratio < minimum and (f - g) > k * spread
    return not failed, ratio, f"{what} {_pm(g, g_sd)} vs floor {_pm(f, f_sd)}: ×{ratio:.2f}"


def _utility_check(metrics, generator, settings: VerdictSettings) -> tuple[bool | None, float, str]:
    utility = metrics[(metrics["protocol"] == "utility") & (metrics["cell_type"] != ALL_TYPES)]
    f1 = utility[utility["metric"] == "f1"].pivot_table(index=["fold", "cell_type"], columns="generator",
                                                        values="value")
    if generator not in f1 or REAL_ONLY not in f1:
        return None, float("nan"), "no classification utility computed"
    support = utility[(utility["metric"] == "support") & (utility["generator"] == REAL_ONLY)]
    support = support.set_index(["fold", "cell_type"])["value"]
    small: list[str] = []
    if len(support):
        aligned = support.reindex(f1.index)
        small = sorted({t for (_, t), n in aligned.items() if not n >= settings.min_support})
        f1 = f1[aligned.to_numpy() >= settings.min_support]
    diffs = (f1[generator] - f1[REAL_ONLY]).dropna().to_numpy()
    excluded = f" (left out, < {settings.min_support} test cells: {', '.join(small)})" if small else ""
    if len(diffs) == 0:
        return None, float("nan"), f"no cell type with ≥ {settings.min_support} test cells{excluded}"
    uplift = float(diffs.mean())
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    useful = uplift > 0 and math.isfinite(se) and uplift > settings.spread_factor * se
    return useful, uplift, (f"mean per-type F1 uplift {uplift:+.3f} ± {se:.3f} (se over {len(diffs)} "
                            f"type × fold pairs){excluded}")


def _generators(metrics: pd.DataFrame) -> list[str]:
    names = metrics.loc[metrics["protocol"] == FAIR, "generator"]
    return [g for g in dict.fromkeys(names) if g not in REAL_ROWS]


def verdict_table(metrics: pd.DataFrame, settings: VerdictSettings | None = None,
                  generators: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per generator: ``generator``, ``sanity_baseline`` and, per question of :data:`QUESTIONS`,
    ``<q>`` (✓/✗/–), ``<q>_value``, ``<q>_threshold`` and ``<q>_detail``.

    ``metrics`` is the long table with the ``fair`` and ``within_type`` rows of the floor and the
    generators (and the ``utility`` rows); folds are pooled as described in the module docstring.
    """
    settings = settings or VerdictSettings()
    k = settings.spread_factor
    beyond = f" beyond {k:g}× spread"
    rows = []
    for generator in (generators if generators is not None else _generators(metrics)):
        checks: dict[str, tuple[bool | None, float, str, str]] = {}
        ok, value, detail = _excess_check(metrics, generator, FAIR, settings.max_detection_excess, k, "detection")
        checks["realistic"] = (ok, value, detail, f"excess ≤ {settings.max_detection_excess:g}{beyond}")
        ok_w, excess_w, detail_w = _excess_check(metrics, generator, WITHIN_TYPE, settings.max_within_type_excess,
                                                 k, "within-type detection")
        ok_r, ratio_r, detail_r = _ratio_check(metrics, generator, WITHIN_TYPE, "correlation_r",
                                               settings.min_correlation_ratio, k, "correlation r")
        known = [x for x in (ok_w, ok_r) if x is not None]
        checks["structure"] = (all(known) if known else None, ratio_r, f"{detail_w}; {detail_r}",
                               f"excess ≤ {settings.max_within_type_excess:g} and correlation "
                               f"≥ {settings.min_correlation_ratio:g}× floor{beyond}")
        ok, value, detail = _ratio_check(metrics, generator, FAIR, "recall", settings.min_recall_ratio, k, "recall")
        checks["diverse"] = (ok, value, detail, f"≥ {settings.min_recall_ratio:g}× floor{beyond}")
        memo, memo_sd = mean_and_spread(metrics, generator, FAIR, "memorization")
        close, _ = mean_and_spread(metrics, generator, FAIR, "memorization_close_fraction")
        duplicates, _ = mean_and_spread(metrics, generator, FAIR, "duplicate_fraction")
        if math.isfinite(memo):
            copying = memo + k * _spread_of_mean(metrics, generator, FAIR, "memorization", memo_sd) \
                < settings.min_memorization
            checks["not_copying"] = (not copying, memo, f"memorisation {_pm(memo, memo_sd)}, close fraction "
                                     f"{close:.3f}, exact duplicates {duplicates:.3f}",
                                     f"score ≥ {settings.min_memorization:g}")
        else:
            checks["not_copying"] = (None, float("nan"), "memorisation not computed", "")
        ok, value, detail = _utility_check(metrics, generator, settings)
        checks["useful"] = (ok, value, detail, f"uplift > 0{beyond} (types with ≥ {settings.min_support} test cells)")
        row: dict[str, Any] = {"generator": generator, "sanity_baseline": generator in SANITY_BASELINES}
        for question, (ok, value, detail, threshold) in checks.items():
            row[question] = NOT_COMPUTED if ok is None else (PASS if ok else FAIL)
            row[f"{question}_value"] = value
            row[f"{question}_threshold"] = threshold
            row[f"{question}_detail"] = detail
        rows.append(row)
    columns = ["generator", "sanity_baseline"] + [f"{q}{s}" for q in QUESTIONS
                                                  for s in ("", "_value", "_threshold", "_detail")]
    return pd.DataFrame(rows, columns=columns)


def verdict_sentence(verdict: pd.DataFrame) -> str:
    """The best generator among those that do not copy (sanity baselines never), or that none is close."""
    trained = verdict[~verdict["sanity_baseline"].astype(bool)]
    candidates = trained[trained["not_copying"] != FAIL]
    if candidates.empty:
        return "No generator other than the sanity baselines was evaluated without copying its training cells."
    close = candidates[(candidates["realistic"] == PASS) & (candidates["structure"] != FAIL)]
    if close.empty:
        nearest = candidates.loc[candidates["realistic_value"].astype(float).idxmin()] \
            if candidates["realistic_value"].notna().any() else None
        tail = "" if nearest is None else (f" (closest: {nearest['generator']}, detection AUC "
                                           f"{nearest['realistic_value']:+.3f} above the floor)")
        return f"No generator is close to real data on this dataset{tail}."
    best = close.loc[close["realistic_value"].astype(float).idxmin()]
    kept = [QUESTION_LABELS[q].lower() for q in QUESTIONS if best[q] == PASS]
    return (f"Best generator among those that do not copy: {best['generator']} (detection AUC "
            f"{best['realistic_value']:+.3f} above the floor; {', '.join(kept)}).")


def fit_spread_note(metrics: pd.DataFrame) -> list[str]:
    """A note for tables of one fold: their spreads are over test half-splits, not over refits."""
    fair = metrics[(metrics["protocol"] == FAIR) & ~metrics["generator"].isin(REAL_ROWS)]
    if fair.empty or fair["fold"].nunique() > 1:
        return []
    return ["One fold: each generator was fitted once, so these spreads (and the verdict's) are over the test "
            "half-splits, not over refits; refitting with another seed can move a learned generator's detection "
            "AUC by more (docs/evaluation.md, 'Which cells choose the genes', measures it). More folds "
            "(folds_to_run) give spreads that include the fit."]


def verdict_display(verdict: pd.DataFrame) -> pd.DataFrame:
    """The verdict as shown in the report: ``✓ 0.012`` per question, sanity baselines marked."""
    def cell(row: pd.Series, question: str) -> str:
        value = row[f"{question}_value"]
        number = "" if not np.isfinite(value) else (f" {value:+.3f}" if question in ("realistic", "useful")
                                                    else f" {value:.2f}")
        return f"{row[question]}{number}"

    out = pd.DataFrame({"generator": [f"{g} (sanity baseline)" if s else g
                                      for g, s in zip(verdict["generator"], verdict["sanity_baseline"], strict=True)]})
    for question in QUESTIONS:
        out[QUESTION_LABELS[question]] = [cell(row, question) for _, row in verdict.iterrows()]
    return out
