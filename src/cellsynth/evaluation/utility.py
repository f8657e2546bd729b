"""Classification utility rows (paper 4.4): a random forest on real (+ synthetic up-sampling) cells."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

from cellsynth.evaluation.protocol import (
    ALL_TYPES,
    REAL_ONLY,
    UTILITY,
    EvaluationSettings,
    aligned_matrix,
    cell_labels,
    long_frame,
    without_nonfinite,
)
from cellsynth.metrics import classification_utility

__all__ = ["utility_metrics"]


def utility_metrics(
    train: AnnData,
    test: AnnData,
    upsample: AnnData | None,
    settings: EvaluationSettings,
    *,
    dataset: str,
    fold: int,
    generator: str = REAL_ONLY,
):
    """Long-format ``utility`` rows of one random forest (see :func:`cellsynth.metrics.classification_utility`).

    The forest (``criterion="entropy"``, ``settings.utility.n_estimators`` trees, ``random_state =
    settings.seed``) is trained on ``train.X`` (HVG expression) plus, when given, ``upsample.X``
    (genes aligned to the training cells; cells with non-finite values left out), and scored on ``test.X``.

    Returns
    -------
    pandas.DataFrame
        Rows ``accuracy``, ``precision_macro`` … ``f1_weighted``, ``n_train_real``, ``n_train_extra``
        with ``cell_type = "all"``, and ``f1`` and ``support`` (test cells) per test cell type.
    """
    y_train, y_test = cell_labels(train), cell_labels(test)
    if y_train is None or y_test is None:
        raise ValueError("classification utility needs obs['cell_type'] on the training and test cells")
    X_test = aligned_matrix(test, train.var_names)
    X_extra = y_extra = None
    if upsample is not None and upsample.n_obs:
        upsample, _ = without_nonfinite(upsample, f"{generator} upsample")
        y_extra = cell_labels(upsample)
        if y_extra is None:
            raise ValueError(f"{generator}: the upsample cells have no obs['cell_type']")
        X_extra = aligned_matrix(upsample, train.var_names)
    scores = classification_utility(
        train.X, y_train, X_test, y_test, X_extra, y_extra,
        seed=settings.seed, n_estimators=settings.utility.n_estimators, n_jobs=settings.utility.n_jobs,
    )
    rows = []
    for name, value in scores.items():
        metric, cell_type = name, ALL_TYPES
        if name.startswith("f1[") and name.endswith("]"):
            metric, cell_type = "f1", name[3:-1]
        rows.append({"dataset": dataset, "generator": generator, "fold": int(fold), "protocol": UTILITY,
                     "cell_type": cell_type, "metric": metric, "value": float(value)})
    # Test support of every type: Table 3 shows it, and the verdict leaves rare types out of its call.
    for cell_type, n in pd.Series(y_test).value_counts().sort_index().items():
        rows.append({"dataset": dataset, "generator": generator, "fold": int(fold), "protocol": UTILITY,
                     "cell_type": str(cell_type), "metric": "support", "value": float(n)})
    return long_frame(rows)
