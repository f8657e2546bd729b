"""Classification utility of synthetic cells (paper section 4.4 and Table 3).

A random forest is trained on the real training cells alone, and on the real training cells plus a
generator's up-sampling cells; both are evaluated on the fold's real test cells. Synthetic cells are
useful when they raise the test scores, above all the per-type F1 of the rare types.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

__all__ = ["classification_utility", "upsample_counts", "utility_frame"]


def upsample_counts(labels, quantile: float = 0.75) -> dict[str, int]:
    """How many synthetic cells of each type the paper adds: every type below Q3 is topped up to Q3.

    .. math::  Q_3 = \\operatorname{quantile}_{0.75}\\big(\\{n_t\\}_t\\big)
               \\ (\\text{method} = \\text{"nearest"}), \\qquad
               \\mathrm{extra}_t = \\max(0,\\ Q_3 - n_t)

    over the cell counts :math:`n_t` of the types in ``labels`` (the training cells of a fold).

    Returns
    -------
    dict
        ``{type: extra_t}`` for the types with ``extra_t > 0``, in sorted type order.
    """
    counts = pd.Series(np.asarray(labels, dtype=object)).value_counts().sort_index()
    target = int(np.quantile(counts.to_numpy(), quantile, method="nearest"))
    return {str(t): int(target - c) for t, c in counts.items() if c < target}


def _stack(a, b):
    if sp.issparse(a) or sp.issparse(b):
        return sp.vstack([sp.csr_matrix(a), sp.csr_matrix(b)], format="csr")
    return np.vstack([np.asarray(a), np.asarray(b)])


def classification_utility(
    X_train,
    y_train,
    X_test,
    y_test,
    X_extra=None,
    y_extra=None,
    *,
    seed: int = 0,
    n_estimators: int = 100,
    n_jobs: int | None = None,
) -> dict[str, float]:
    """Test-set scores of a random forest trained on real (+ optional extra synthetic) cells.

    ``RandomForestClassifier(criterion="entropy", n_estimators=100, random_state=seed)`` (paper 4.4,
    default ``max_depth=None``) is fitted on ``X_train`` (plus ``X_extra`` when given) and predicts
    ``X_test``. With per-type precision :math:`P_t = TP_t / (TP_t + FP_t)`, recall
    :math:`R_t = TP_t / (TP_t + FN_t)` and :math:`F1_t = 2 P_t R_t / (P_t + R_t)` (0 when undefined),

    .. math::  M_\\text{macro} = \\frac{1}{T} \\sum_t M_t, \\qquad
               M_\\text{weighted} = \\sum_t \\frac{n_t}{n} M_t

    over the types in ``y_test`` ∪ predictions (:math:`n_t` = test cells of type *t*), as in
    ``sklearn.metrics.classification_report`` (the paper's code). **All higher is better.**

    Parameters
    ----------
    X_train, X_test, X_extra : array-like or sparse, shape (n, genes)
        Expression of the same genes (the paper: log-normalised HVG expression, no PCA).
    y_train, y_test, y_extra : array-like of labels
    seed : int
    n_estimators : int, default 100
    n_jobs : int or None
        Passed to the forest (the result does not depend on it).

    Returns
    -------
    dict[str, float]
        ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro``, ``precision_weighted``,
        ``recall_weighted``, ``f1_weighted``, and ``f1[<type>]`` for every type present in ``y_test``,
        plus ``n_train_real`` and ``n_train_extra`` (cell counts the forest saw).
    """
    y_train = np.asarray(y_train, dtype=object).astype(str)
    y_test = np.asarray(y_test, dtype=object).astype(str)
    X_fit, y_fit = X_train, y_train
    n_extra = 0
    if X_extra is not None:
        if y_extra is None:
            raise ValueError("y_extra is required with X_extra")
        y_extra = np.asarray(y_extra, dtype=object).astype(str)
        if X_extra.shape[0] != len(y_extra):
            raise ValueError("X_extra and y_extra have different lengths")
        n_extra = len(y_extra)
        if n_extra:
            X_fit, y_fit = _stack(X_train, X_extra), np.concatenate([y_train, y_extra])
    forest = RandomForestClassifier(
        criterion="entropy", n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs
    )
    forest.fit(X_fit, y_fit)
    y_pred = forest.predict(X_test)

    out: dict[str, float] = {"accuracy": float(accuracy_score(y_test, y_pred))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_test, y_pred, average=average, zero_division=0)
        out[f"precision_{average}"] = float(p)
        out[f"recall_{average}"] = float(r)
        out[f"f1_{average}"] = float(f)
    types = np.unique(y_test)
    per_type = f1_score(y_test, y_pred, labels=types, average=None, zero_division=0)
    out.update({f"f1[{t}]": float(v) for t, v in zip(types, per_type, strict=True)})
    out["n_train_real"] = float(len(y_train))
    out["n_train_extra"] = float(n_extra)
    return out


def utility_frame(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Long table ``setting, metric, value`` from ``{setting: classification_utility(...)}``."""
    rows = [(s, m, v) for s, res in results.items() for m, v in res.items()]
    return pd.DataFrame(rows, columns=["setting", "metric", "value"])
