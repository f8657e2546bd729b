"""Evaluation of synthetic cells: the paper's protocol, an honest protocol, utility, tables, figures, report.

Plain functions over AnnData / numpy / pandas (no Kedro imports); the Kedro pipeline
``cellsynth.pipelines.evaluation`` is a thin layer over them. Metrics come from
:mod:`cellsynth.metrics`; this package decides *what is compared with what*.

The protocol (what ``scripts/recompute_metrics.py`` recomputes independently)
-----------------------------------------------------------------------------
Per fold *k*, with ``train``/``test`` the fold's real cells (``X`` = log-normalised HVGs,
``obs["cell_type"]``) and ``seed`` = ``evaluation.seed``:

1. **Reference space.** ``StandardScaler`` (population sd, zero-variance genes get sd 1) then
   ``PCA(n_components=n_pca, random_state=seed)``, both fitted on ``train.X`` only (float64). Every
   distribution metric below is computed on cells projected into it (:class:`~cellsynth.metrics.ReferenceSpace`).
2. **Honest split.** ``split_halves(test.obs["cell_type"], seed)`` splits the test cells into halves
   A (reference) and B, stratified by type; saved as ``fold_<k>.honest_split`` (columns ``cell``,
   ``position``, ``half``, ``cell_type``, ``fold``).
3. **Generator sample for the honest protocol** (:func:`matched_subsample`): from the generator's
   ``synthetic`` (``matched``) cells, with ``rng = numpy.random.default_rng(seed)``: for each type
   of B in sorted order, ``min(|B_t|, available)`` cells of that type without replacement
   (``rng.choice``); any shortfall is filled from the remaining cells at random, up to |B| in total.
   Saved as ``<generator>.fold_<k>.honest_sample`` (positions into the synthetic AnnData).
4. **Non-finite cells.** Synthetic or up-sampling cells with any NaN/inf value (a diverged generator)
   are left out of every comparison (step 3 draws from the finite cells only) and counted in the
   ``run`` rows ``nonfinite_cells_synthetic`` / ``nonfinite_cells_upsample``.

Protocols (column ``protocol`` of ``metrics.parquet``):

``paper``
    WD, CD, MMD (biased, γ ∈ {2, 1, 0.5, 0.1, 0.01, 0.005}) of the generator's ``synthetic`` cells
    against all test cells; the paper's "train vs test" column (generator ``real train vs test``)
    compares all training cells with the test cells. Note: training cells are *in-sample* for the
    PCA, so that column is not a floor.
``paper_upsample``
    The paper's 5-fold tables: (real training cells + the generator's ``upsample`` cells) against
    the test cells; ``real train vs test`` is repeated as its real-data column.
``honest``
    Reference = half A. The floor (generator ``real (B vs A floor)``) compares B with A; each
    generator's honest sample (n = |B|, B's type counts where possible) is compared with A. Metrics:
    ``wd``, ``cd``, ``mmd``, ``mmd_unbiased``, ``c2st_auc``, ``precision``, ``recall`` (k-NN, A as the
    real set), ``memorization`` and ``memorization_close_fraction`` (nearest-training-cell distance of
    the compared cells relative to that of the real cells of A). Each also appears as
    ``<metric>_ratio_to_floor`` = value / floor value of the same fold and cell type (NaN when the
    floor is ≤ 0).
``utility``
    Paper 4.4: ``RandomForestClassifier(criterion="entropy", n_estimators, random_state=seed)`` on
    the HVG expression, trained on the real training cells (``real only``) or on them + the
    generator's ``upsample`` cells, scored on the test cells: ``accuracy``, macro and weighted
    ``precision``/``recall``/``f1``, and ``f1`` per cell type.
``run``
    Bookkeeping of the generator run (``fit_seconds``, ``sample_seconds``, ...).

``fair``, ``within_type``, ``counts``
    The fair protocol (:mod:`cellsynth.evaluation.fair`): a space fitted per comparison on half A ∪
    the compared set, halves redrawn with seeds ``seed + r`` for ``r < fair.honest_repeats`` (mean and
    ``<metric>_repeat_sd``), memorisation in a space fitted on half A only, within-type detection and
    correlation preservation, KS distances of raw counts when the cells carry them. The verdict
    (:mod:`cellsynth.evaluation.verdict`) reads these rows.

Per-type rows (``cell_type`` ≠ ``"all"``) repeat the comparison within each type with at least
``min_cells_per_type`` cells on both sides (paper protocol: wd/cd/mmd; honest: all metrics).
Counts are rows ``n_cells_reference`` / ``n_cells_compared``.
"""

from cellsynth.evaluation.fair import COUNTS, FAIR, WITHIN_TYPE, fair_metrics
from cellsynth.evaluation.figures import plot_metrics_vs_floor, plot_reference_pca, plot_training_curves
from cellsynth.evaluation.protocol import (
    COLUMNS,
    FLOOR,
    HONEST,
    PAPER,
    PAPER_UPSAMPLE,
    REAL_ONLY,
    REAL_TRAIN_VS_TEST,
    RUN,
    SANITY_BASELINES,
    UTILITY,
    EvaluationSettings,
    add_floor_ratios,
    fit_reference_space,
    generator_metrics,
    halves_from_split,
    honest_split_frame,
    long_frame,
    matched_subsample,
    real_metrics,
    run_info_rows,
    validate_long_frame,
)
from cellsynth.evaluation.report import evaluation_section
from cellsynth.evaluation.tables import (
    TABLE_NOTES,
    fair_table,
    honest_table,
    paper_table,
    per_type_table,
    run_table,
    summarise,
    to_markdown,
    utility_table,
)
from cellsynth.evaluation.utility import utility_metrics
from cellsynth.evaluation.verdict import fit_spread_note, verdict_display, verdict_sentence, verdict_table

__all__ = [
    "COLUMNS",
    "COUNTS",
    "FAIR",
    "WITHIN_TYPE",
    "fair_metrics",
    "fair_table",
    "fit_spread_note",
    "long_frame",
    "verdict_display",
    "verdict_sentence",
    "verdict_table",
    "FLOOR",
    "HONEST",
    "PAPER",
    "PAPER_UPSAMPLE",
    "REAL_ONLY",
    "REAL_TRAIN_VS_TEST",
    "RUN",
    "SANITY_BASELINES",
    "TABLE_NOTES",
    "UTILITY",
    "EvaluationSettings",
    "add_floor_ratios",
    "evaluation_section",
    "fit_reference_space",
    "generator_metrics",
    "halves_from_split",
    "honest_split_frame",
    "honest_table",
    "matched_subsample",
    "paper_table",
    "per_type_table",
    "plot_metrics_vs_floor",
    "plot_reference_pca",
    "plot_training_curves",
    "real_metrics",
    "run_info_rows",
    "run_table",
    "summarise",
    "to_markdown",
    "utility_metrics",
    "utility_table",
    "validate_long_frame",
]
