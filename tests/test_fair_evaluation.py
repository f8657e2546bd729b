"""The fair protocol, within-type structure, count realism and the verdict: known answers on real data.

The known answers (issue 16, item 7) run on the embedded PBMC3K data, fold 0 built as the splitting
pipeline builds it, with the sanity baselines (no training): the floor's detection is near 0.5,
copied training cells look real but are flagged as copies, a within-type gene shuffle is flagged on
structure, and a per-type Gaussian in PCA space is flagged.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from anndata import AnnData

from cellsynth.config import EvaluationSettings, FairSettings, VerdictSettings
from cellsynth.evaluation import fair_metrics, fair_table, long_frame, utility_table, verdict_table
from cellsynth.evaluation.fair import correlation_preservation, count_realism, detection_auc, type_centred
from cellsynth.evaluation.verdict import FAIL, NOT_COMPUTED, PASS, fit_spread_note, verdict_sentence
from cellsynth.generators import GENERATORS
from cellsynth.pipelines.preprocessing.nodes import filter_cells_and_genes, log_normalise, validate_input
from cellsynth.pipelines.splitting.nodes import build_fold, split_folds
from cellsynth.schema import FLOOR, REAL_ONLY
from cellsynth.tracking.convert import METRICS
from conftest import PROJECT_ROOT, RAW_DATA

SETTINGS = EvaluationSettings.from_params({"fair": {"honest_repeats": 5}})


def _parameters() -> dict:
    """conf/base parameters, with the dataset block from globals.yml (parameters.yml interpolates it)."""
    merged: dict = {}
    for path in sorted((PROJECT_ROOT / "conf" / "base").glob("parameters*.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    merged["dataset"] = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "globals.yml").read_text())["dataset"]
    return merged


@pytest.fixture(scope="module")
def pbmc_fold0() -> tuple[AnnData, AnnData]:
    """PBMC3K fold 0 exactly as ``kedro run --pipelines splitting`` builds it (conf/base parameters)."""
    params = _parameters()
    dataset = {**params["dataset"], "path": str(RAW_DATA / "pbmc3k_counts.h5ad")}
    raw = ad.read_h5ad(dataset["path"])
    validated = validate_input(raw, dataset)
    kept, *_ = filter_cells_and_genes(validated, params["preprocessing"], params["splitting"], dataset)
    normalised = log_normalise(kept, params["preprocessing"])
    folds = split_folds(normalised, params["splitting"])
    return build_fold(normalised, folds, params["splitting"], fold=0)


def _sample(name: str, train: AnnData, test: AnnData) -> AnnData:
    generator = GENERATORS[name]()
    generator.fit(train, seed=0, progress=False)
    counts = test.obs["cell_type"].astype(str).value_counts().to_dict()
    return generator.sample(test.n_obs, counts, seed=1)


@pytest.fixture(scope="module")
def known_answers(pbmc_fold0) -> pd.DataFrame:
    train, test = pbmc_fold0
    frames = [fair_metrics(train, test, None, SETTINGS, dataset="pbmc3k", fold=0)]
    for name in ("train_copy", "gene_shuffle", "class_gaussian_pca"):
        frames.append(fair_metrics(train, test, _sample(name, train, test), SETTINGS, dataset="pbmc3k", fold=0,
                                   generator=name))
    return pd.concat(frames, ignore_index=True)


def _value(metrics: pd.DataFrame, generator: str, protocol: str, metric: str) -> float:
    row = metrics[(metrics["generator"] == generator) & (metrics["protocol"] == protocol)
                  & (metrics["metric"] == metric)]
    assert len(row) == 1, (generator, protocol, metric)
    return float(row["value"].iloc[0])


# ----------------------------------------------------------------------------- known answers (item 7)
def test_floor_detection_is_near_one_half(known_answers):
    assert 0.45 <= _value(known_answers, FLOOR, "fair", "c2st_auc") <= 0.55
    assert _value(known_answers, FLOOR, "fair", "n_repeats") == 5
    assert _value(known_answers, FLOOR, "fair", "c2st_auc_repeat_sd") > 0  # the repeats differ


def test_copied_training_cells_look_real_but_are_flagged_as_copies(known_answers):
    floor = _value(known_answers, FLOOR, "fair", "c2st_auc")
    assert abs(_value(known_answers, "train_copy", "fair", "c2st_auc") - floor) <= 0.05
    assert _value(known_answers, "train_copy", "fair", "memorization") < 0.05
    assert _value(known_answers, "train_copy", "fair", "memorization_close_fraction") > 0.9
    verdict = verdict_table(known_answers).set_index("generator")
    assert verdict.loc["train_copy", "realistic"] == PASS
    assert verdict.loc["train_copy", "not_copying"] == FAIL


def test_within_type_gene_shuffle_is_flagged_on_structure(known_answers):
    r_floor = _value(known_answers, FLOOR, "within_type", "correlation_r")
    r_shuffle = _value(known_answers, "gene_shuffle", "within_type", "correlation_r")
    assert r_floor > 0.03 and abs(r_shuffle) < 0.02
    verdict = verdict_table(known_answers).set_index("generator")
    assert verdict.loc["gene_shuffle", "structure"] == FAIL
    assert verdict.loc["gene_shuffle", "not_copying"] == PASS
    assert verdict.loc["train_copy", "structure"] == PASS


def test_class_gaussian_pca_is_flagged(known_answers):
    verdict = verdict_table(known_answers).set_index("generator")
    assert verdict.loc["class_gaussian_pca", "realistic"] == FAIL
    assert verdict.loc["class_gaussian_pca", "diverse"] == FAIL
    assert _value(known_answers, "class_gaussian_pca", "fair", "c2st_auc") > 0.9


def test_sanity_baselines_are_never_named_best(known_answers):
    verdict = verdict_table(known_answers)
    assert verdict["sanity_baseline"].all()
    sentence = verdict_sentence(verdict)
    assert not any(name in sentence for name in ("train_copy", "gene_shuffle", "class_gaussian_pca"))


def test_counts_are_skipped_for_generators_without_counts_and_said_so(known_answers):
    assert set(known_answers.loc[known_answers["protocol"] == "counts", "generator"]) == {FLOOR}
    table = fair_table(known_answers).set_index("metric")
    assert table.loc["KS library size ↓", "gene_shuffle (sanity)"] == "skipped: no counts"
    assert table.loc["memorisation (≈1 ok, ≪1 copies)", FLOOR] == "— (B is the holdout)"
    assert "±" in table.loc["detection AUC (best: the floor's)", "train_copy (sanity)"]


# ----------------------------------------------------------------------------- building blocks
def _gaussian(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, size=(n, d))


def test_detection_stays_meaningful_on_small_sets():
    fair, c2st = FairSettings(), EvaluationSettings().c2st
    apart = detection_auc(_gaussian(24, 50, 0.0, 0), _gaussian(24, 50, 3.0, 1), fair, c2st, seed=0)
    same = detection_auc(_gaussian(24, 50, 0.0, 0), _gaussian(24, 50, 0.0, 1), fair, c2st, seed=0)
    assert apart > 0.95 and same < 0.75
    assert np.isnan(detection_auc(_gaussian(8, 5, 0, 0), _gaussian(8, 5, 3, 1), fair, c2st, seed=0))


def test_type_centred_uses_the_given_means_and_leaves_other_types_out():
    X = np.array([[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]])
    labels = np.array(["a", "a", "b"])
    out = type_centred(X, labels, {"a": np.array([2.0, 3.0])})
    np.testing.assert_allclose(out, [[-1.0, -1.0], [1.0, 1.0]])


def test_correlation_preservation_sees_a_gene_shuffle():
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(200, 1))
    X = factor @ rng.normal(size=(1, 30)) + rng.normal(0, 0.5, size=(200, 30)) + 5
    labels = np.repeat(["t"], 200)
    shuffled = np.column_stack([rng.permutation(X[:, j]) for j in range(X.shape[1])])
    same, n_types = correlation_preservation(X[:100], labels[:100], X[100:], labels[100:], n_genes=20)
    broken, _ = correlation_preservation(X[:100], labels[:100], shuffled[100:], labels[100:], n_genes=20)
    assert n_types == 1 and same > 0.8 and abs(broken) < 0.3
    assert correlation_preservation(X[:10], labels[:10], X[10:20], labels[10:20], min_cells=20) == (float("nan"), 0) \
        or np.isnan(correlation_preservation(X[:10], labels[:10], X[10:20], labels[10:20], min_cells=20)[0])


def _counts_anndata(n: int, scale: float, seed: int, types=("a", "b")) -> AnnData:
    profile = np.random.default_rng(99).gamma(2.0, 1.0, size=(1, 40))  # the same genes in every set
    rng = np.random.default_rng(seed)
    counts = rng.poisson(scale * profile, size=(n, 40)).astype(np.float32)
    X = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.resize(list(types), n))}, index=[f"c{seed}_{i}" for i in range(n)])
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(40)]),
                   layers={"counts": sp.csr_matrix(counts)})


def test_count_realism_is_near_zero_for_the_same_distribution_and_large_for_another():
    same = count_realism(_counts_anndata(300, 1.0, 0).layers["counts"], _counts_anndata(300, 1.0, 1).layers["counts"])
    other = count_realism(_counts_anndata(300, 1.0, 0).layers["counts"], _counts_anndata(300, 4.0, 1).layers["counts"])
    assert set(same) == {"ks_library_size", "ks_detected_genes", "ks_gene_mean", "ks_gene_variance",
                         "ks_gene_detection"}
    assert same["ks_library_size"] < 0.15 and other["ks_library_size"] > 0.8


def test_fair_metrics_report_counts_when_both_sides_carry_them_and_leave_inputs_alone():
    train, test, synthetic = _counts_anndata(120, 1.0, 0), _counts_anndata(80, 1.0, 1), _counts_anndata(80, 3.0, 2)
    before = synthetic.X.copy()
    settings = EvaluationSettings.from_params({"n_pca": 10, "fair": {"honest_repeats": 2, "correlation_min_cells": 10}})
    frame = fair_metrics(train, test, synthetic, settings, dataset="tiny", fold=0, generator="g")
    counts = frame[frame["protocol"] == "counts"].set_index("metric")["value"]
    assert counts["ks_library_size"] > 0.5 and "ks_library_size_repeat_sd" in counts
    assert np.array_equal(before, synthetic.X)
    floor = fair_metrics(train, test, None, settings, dataset="tiny", fold=0)
    assert floor.loc[(floor["protocol"] == "counts") & (floor["metric"] == "ks_library_size"), "value"].iloc[0] < 0.4
    # without counts on the synthetic side: no count rows
    del synthetic.layers["counts"]
    frame = fair_metrics(train, test, synthetic, settings, dataset="tiny", fold=0, generator="g")
    assert not (frame["protocol"] == "counts").any()


# ----------------------------------------------------------------------------- verdict rules
def _rows(generator: str, protocol: str, values: dict, fold: int = 0) -> list[dict]:
    return [{"dataset": "d", "generator": generator, "fold": fold, "protocol": protocol, "cell_type": "all",
             "metric": m, "value": v} for m, v in values.items()]


def _toy(detection: float, sd: float) -> pd.DataFrame:
    rows = _rows(FLOOR, "fair", {"c2st_auc": 0.5, "c2st_auc_repeat_sd": sd, "recall": 0.7, "recall_repeat_sd": 0.01})
    rows += _rows(FLOOR, "within_type", {"c2st_auc": 0.5, "correlation_r": -0.01})
    rows += _rows("g", "fair", {"c2st_auc": detection, "c2st_auc_repeat_sd": sd, "recall": 0.7,
                                "memorization": 0.95, "memorization_close_fraction": 0.06})
    rows += _rows("g", "within_type", {"c2st_auc": 0.5, "correlation_r": 0.2})
    return long_frame(rows)


def test_a_difference_is_only_called_beyond_threshold_and_spread():
    assert verdict_table(_toy(0.60, 0.01)).iloc[0]["realistic"] == FAIL
    assert verdict_table(_toy(0.60, 0.08)).iloc[0]["realistic"] == PASS  # 0.1 excess within 2 × 0.11 spread
    assert verdict_table(_toy(0.54, 0.0)).iloc[0]["realistic"] == PASS
    row = verdict_table(_toy(0.60, 0.01)).iloc[0]
    assert row["realistic_value"] == pytest.approx(0.1) and "0.05" in row["realistic_threshold"]
    # a floor correlation ≤ 0 gives no ratio: explained, not NaN printed
    assert "≤ 0" in row["structure_detail"] and row["structure"] == PASS
    assert row["useful"] == NOT_COMPUTED and verdict_sentence(verdict_table(_toy(0.54, 0.0))).startswith("Best")


def test_with_several_folds_the_spread_is_the_standard_error_of_the_fold_paired_difference():
    def folds(detections):
        return pd.concat([_toy(d, 0.0).assign(fold=k) for k, d in enumerate(detections)], ignore_index=True)

    # excess 0.1 over 3 folds, se 0.058: within 2 × se, no call
    row = verdict_table(folds([0.60, 0.70, 0.50])).iloc[0]
    assert row["realistic_value"] == pytest.approx(0.1) and row["realistic"] == PASS
    # far from the floor on two folds of five: excess 0.16 ± 0.056 (se; the fold sd is 0.125) is called
    row = verdict_table(folds([0.55, 0.60, 0.80, 0.55, 0.80])).iloc[0]
    assert row["realistic_value"] == pytest.approx(0.16) and row["realistic"] == FAIL
    # the floor's own fold-to-fold changes cancel in the paired difference
    shifted = folds([0.56, 0.66, 0.76])
    for fold, shift in enumerate((0.0, 0.1, 0.2)):
        floor_auc = (shifted["generator"] == FLOOR) & (shifted["fold"] == fold) & (shifted["metric"] == "c2st_auc")
        shifted.loc[floor_auc & (shifted["protocol"] == "fair"), "value"] += shift
    row = verdict_table(shifted).iloc[0]
    assert row["realistic_value"] == pytest.approx(0.06) and row["realistic"] == FAIL  # se 0: beyond 0.05


def test_a_one_fold_verdict_says_its_spread_leaves_out_the_fit():
    from cellsynth.pipelines.evaluation.nodes import make_verdict

    one_fold = _toy(0.60, 0.01)
    _, markdown = make_verdict(one_fold, {})
    assert fit_spread_note(one_fold) and fit_spread_note(one_fold)[0] in markdown
    assert "fitted once" in markdown
    two_folds = pd.concat([one_fold, _toy(0.60, 0.01).assign(fold=1)], ignore_index=True)
    assert fit_spread_note(two_folds) == []
    assert "fitted once" not in make_verdict(two_folds, {})[1]


def test_useful_leaves_out_rare_types_and_needs_an_uplift_beyond_its_spread():
    rows = []
    for fold in (0, 1):
        for cell_type, n, real, gen in (("big", 100, 0.80, 0.90), ("mid", 40, 0.70, 0.79), ("tiny", 3, 0.0, 1.0)):
            rows += [{"dataset": "d", "generator": g, "fold": fold, "protocol": "utility", "cell_type": cell_type,
                      "metric": m, "value": v}
                     for g, m, v in ((REAL_ONLY, "f1", real), ("g", "f1", gen + 0.01 * fold),
                                     (REAL_ONLY, "support", n), ("g", "support", n))]
    metrics = pd.concat([_toy(0.5, 0.0), long_frame(rows)], ignore_index=True)
    row = verdict_table(metrics, VerdictSettings()).iloc[0]
    assert row["useful"] == PASS and row["useful_value"] == pytest.approx(0.10)
    assert "tiny" in row["useful_detail"]
    table = utility_table(metrics).set_index("metric")
    assert "F1 [tiny] (n = 3; not in the verdict) ↑" in table.index
    assert "F1 [big] (n = 100) ↑" in table.index


def test_verdict_metrics_for_mlflow_have_short_names():
    rows = list(METRICS["verdict"](verdict_table(_toy(0.60, 0.01))))
    keys = {k for k, _, _ in rows}
    assert ("verdict/realistic", 0.0, 0) in rows and ("verdict/not_copying", 1.0, 0) in rows
    assert "verdict/realistic_value" in keys and "verdict/useful" not in keys  # not computable: not logged


def test_the_utility_sentence_never_names_a_sanity_baseline():
    from cellsynth.evaluation.tables import utility_verdict

    rows = [{"dataset": "d", "generator": g, "fold": 0, "protocol": "utility", "cell_type": "all",
             "metric": "f1_macro", "value": v}
            for g, v in ((REAL_ONLY, 0.80), ("class_gaussian_pca", 0.90), ("maf", 0.82), ("smote", 0.81))]
    sentence = utility_verdict(long_frame(rows))
    assert "maf (+0.020" in sentence and "class_gaussian_pca" not in sentence
    only_baselines = long_frame([r for r in rows if r["generator"] in (REAL_ONLY, "class_gaussian_pca")])
    assert "none is named" in utility_verdict(only_baselines)


def test_a_ratio_whose_floor_is_not_positive_is_explained_not_printed_as_nan():
    from cellsynth.evaluation import add_floor_ratios, honest_table

    rows = [{"dataset": "d", "generator": g, "fold": 0, "protocol": "honest", "cell_type": "all", "metric": m,
             "value": v} for g, m, v in ((FLOOR, "mmd_unbiased", -0.0005), ("g", "mmd_unbiased", 0.02),
                                         (FLOOR, "wd", 0.15), ("g", "wd", 0.30))]
    frame = long_frame(rows)
    table = honest_table(add_floor_ratios(frame, frame)).set_index("metric")
    assert table.loc["MMD unbiased ↓", "g"] == "0.02 (floor ≤ 0)"
    assert table.loc["WD ↓", "g"] == "0.3 (×2.00)" and "nan" not in table.to_string().lower()


def test_compare_switches_to_the_logistic_classifier_on_small_sets():
    from cellsynth.metrics import compare

    real, shifted = _gaussian(24, 50, 0.0, 0), _gaussian(24, 50, 3.0, 1)
    assert compare(real, shifted, small_set_cells=None)["c2st_auc"] == 0.5  # gradient boosting cannot split
    assert compare(real, shifted, small_set_cells=100)["c2st_auc"] > 0.95
