"""The evaluation library on tiny AnnData made here: schema, floor, memorisation, tables, report."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from cellsynth import evaluation as ev
from cellsynth.config import EvaluationSettings, UtilitySettings
from cellsynth.evaluation.protocol import COUNT_METRICS, RATIO_SUFFIX
from cellsynth.reporting.figures import figure_to_png
from cellsynth.reporting.html import Figure, Table, page, section_dataset

SETTINGS = EvaluationSettings(seed=0, n_pca=10, min_cells_per_type=20, utility=UtilitySettings(n_estimators=20))


def synthetic_from(matrix: np.ndarray, labels, name: str, var_names) -> AnnData:
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels), "synthetic": True, "generator": name},
        index=[f"{name}_{i}" for i in range(len(labels))],
    )
    adata = AnnData(X=np.asarray(matrix, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(var_names)))
    adata.uns["cellsynth"] = {"generator": name, "fold": 0, "mode": "matched",
                              "fit_seconds": 1.5, "sample_seconds": 0.25}
    return adata


@pytest.fixture(scope="module")
def fold(tiny_adata_factory):
    """Train (240), test (120) and an unseen sample (120) of one distribution, 3 balanced types, 40 genes."""
    full = tiny_adata_factory(480, 40, 3, seed=3)
    train, test, fresh = full[:240].copy(), full[240:360].copy(), full[360:].copy()
    rng = np.random.default_rng(0)
    rows = rng.choice(train.n_obs, test.n_obs, replace=False)
    generators = {
        "train_copy": synthetic_from(train.X[rows], train.obs["cell_type"].to_numpy()[rows], "train_copy",
                                     train.var_names),
        "fresh": synthetic_from(fresh.X, fresh.obs["cell_type"].to_numpy(), "fresh", train.var_names),
    }
    return train, test, generators


@pytest.fixture(scope="module")
def evaluated(fold):
    train, test, generators = fold
    space = ev.fit_reference_space(train, n_components=SETTINGS.n_pca, seed=SETTINGS.seed)
    split = ev.honest_split_frame(test, seed=SETTINGS.seed, fold=0)
    real = ev.real_metrics(train, test, space, split, SETTINGS, dataset="tiny", fold=0)
    frames, samples = [real], {}
    for name, synthetic in generators.items():
        frame, samples[name] = ev.generator_metrics(
            train, test, synthetic, synthetic[:30], space, split, real, SETTINGS,
            dataset="tiny", generator=name, fold=0,
        )
        frames.append(frame)
    frames.append(ev.utility_metrics(train, test, None, SETTINGS, dataset="tiny", fold=0))
    frames.append(ev.utility_metrics(train, test, generators["fresh"][:30], SETTINGS, dataset="tiny", fold=0,
                                     generator="fresh"))
    metrics = ev.validate_long_frame(pd.concat(frames, ignore_index=True))
    return {"space": space, "split": split, "real": real, "metrics": metrics, "samples": samples}


def value(metrics, generator, protocol, metric, cell_type="all"):
    rows = metrics[(metrics["generator"] == generator) & (metrics["protocol"] == protocol)
                   & (metrics["metric"] == metric) & (metrics["cell_type"] == cell_type)]
    assert len(rows) == 1, (generator, protocol, metric, cell_type)
    return float(rows["value"].iloc[0])


def test_long_format_schema(evaluated):
    metrics = evaluated["metrics"]
    assert list(metrics.columns) == ev.COLUMNS
    assert metrics["fold"].dtype == np.int64 and metrics["value"].dtype == np.float64
    assert set(metrics["protocol"]) == {ev.PAPER, ev.PAPER_UPSAMPLE, ev.HONEST, ev.UTILITY, ev.RUN}
    assert {ev.REAL_TRAIN_VS_TEST, ev.FLOOR, ev.REAL_ONLY, "train_copy", "fresh"} <= set(metrics["generator"])
    assert not metrics.duplicated(ev.COLUMNS[:-1]).any()
    assert (metrics["dataset"] == "tiny").all()
    # per-type rows: 3 types × 20 cells per half reach min_cells_per_type = 20
    honest_types = set(metrics.loc[metrics["protocol"] == ev.HONEST, "cell_type"])
    assert honest_types == {"all", "type_0", "type_1", "type_2"}
    assert set(metrics.loc[(metrics["protocol"] == ev.UTILITY) & (metrics["metric"] == "f1"), "cell_type"]) == {
        "type_0", "type_1", "type_2"}
    # the paper protocol compares with all test cells, the honest one with |B| cells against A
    assert value(metrics, "fresh", ev.PAPER, "n_cells_reference") == 120
    assert value(metrics, "fresh", ev.HONEST, "n_cells_reference") == 60
    assert value(metrics, "fresh", ev.HONEST, "n_cells_compared") == 60
    assert value(metrics, "fresh", ev.PAPER_UPSAMPLE, "n_cells_compared") == 240 + 30
    assert value(metrics, "fresh", ev.RUN, "fit_seconds") == 1.5
    for protocol in (ev.PAPER, ev.PAPER_UPSAMPLE):
        assert value(metrics, ev.REAL_TRAIN_VS_TEST, protocol, "wd") > 0
    # empty input frames keep the schema
    assert list(ev.protocol.long_frame([]).columns) == ev.COLUMNS
    with pytest.raises(ValueError, match="duplicate"):
        ev.validate_long_frame(pd.concat([metrics.head(3), metrics.head(3)]))


def test_floor_ratio_of_the_floor_is_one_and_generators_get_ratios(evaluated):
    metrics = evaluated["metrics"]
    ratios = metrics[metrics["metric"].str.endswith(RATIO_SUFFIX)]
    floor = ratios[ratios["generator"] == ev.FLOOR]
    assert len(floor) > 0
    finite = floor["value"].dropna()
    np.testing.assert_allclose(finite.to_numpy(), 1.0)
    # the NaNs are exactly the floor values that are ≤ 0 (e.g. a negative unbiased MMD)
    for row in floor[floor["value"].isna()].itertuples():
        assert value(metrics, ev.FLOOR, ev.HONEST, row.metric.removesuffix(RATIO_SUFFIX), row.cell_type) <= 0
    # every honest metric of a generator has its ratio, per type too
    honest = metrics[(metrics["generator"] == "fresh") & (metrics["protocol"] == ev.HONEST)
                     & ~metrics["metric"].isin(COUNT_METRICS) & ~metrics["metric"].str.endswith(RATIO_SUFFIX)]
    for row in honest.itertuples():
        ratio = value(metrics, "fresh", ev.HONEST, row.metric + RATIO_SUFFIX, row.cell_type)
        floor_value = value(metrics, ev.FLOOR, ev.HONEST, row.metric, row.cell_type)
        if floor_value > 0:
            assert ratio == pytest.approx(row.value / floor_value)


def test_copy_of_train_is_flagged_by_memorisation(evaluated):
    metrics = evaluated["metrics"]
    assert value(metrics, "train_copy", ev.HONEST, "memorization") < 0.1
    assert value(metrics, "train_copy", ev.HONEST, "memorization_close_fraction") > 0.9
    assert value(metrics, "train_copy", ev.HONEST, "memorization_ratio_to_floor") < 0.1
    assert 0.6 < value(metrics, "fresh", ev.HONEST, "memorization") < 1.6
    assert 0.6 < value(metrics, ev.FLOOR, ev.HONEST, "memorization") < 1.6
    for cell_type in ("type_0", "type_1", "type_2"):
        assert value(metrics, "train_copy", ev.HONEST, "memorization", cell_type) < 0.1


def test_honest_split_and_matched_subsample(fold, evaluated):
    _, test, generators = fold
    split = evaluated["split"]
    assert list(split.columns) == ["cell", "position", "half", "cell_type", "fold"]
    assert split["cell"].tolist() == test.obs_names.tolist()
    idx_a, idx_b = ev.halves_from_split(split, test)
    assert len(idx_a) == len(idx_b) == 60 and not set(idx_a) & set(idx_b)
    assert split.groupby(["half", "cell_type"]).size().eq(20).all()
    # same seed → same split; the split refuses other test cells
    pd.testing.assert_frame_equal(split, ev.honest_split_frame(test, seed=0, fold=0))
    with pytest.raises(ValueError, match="does not belong"):
        ev.halves_from_split(split, test[::-1].copy())
    # the generator sample has B's type counts
    sample = evaluated["samples"]["fresh"]
    assert sample["cell_type"].value_counts().to_dict() == split[split["half"] == "B"]["cell_type"].value_counts().to_dict()
    synthetic = generators["fresh"]
    assert synthetic.obs_names[sample["position"]].tolist() == sample["cell"].tolist()
    # a generator lacking a type: the shortfall is filled from its other cells, total still |B|
    labels = np.array(["a"] * 50 + ["b"] * 5)
    chosen = ev.matched_subsample(labels, {"a": 10, "b": 10, "c": 5}, seed=1)
    assert len(chosen) == 25 and len(set(chosen)) == 25 and set(np.flatnonzero(labels == "b")) <= set(chosen)
    np.testing.assert_array_equal(chosen, ev.matched_subsample(labels, {"a": 10, "b": 10, "c": 5}, seed=1))
    assert len(ev.matched_subsample(labels, {"a": 100}, seed=1)) == 55


def test_inputs_are_not_mutated_and_genes_are_aligned(fold, evaluated):
    train, test, generators = fold
    synthetic = generators["fresh"]
    before = (synthetic.X.copy(), synthetic.obs.copy(), dict(synthetic.uns["cellsynth"]))
    shuffled = synthetic[:, synthetic.var_names[::-1]].copy()
    frame, _ = ev.generator_metrics(train, test, shuffled, None, evaluated["space"], evaluated["split"],
                                    evaluated["real"], SETTINGS, dataset="tiny", generator="fresh", fold=0)
    np.testing.assert_array_equal(synthetic.X, before[0])
    pd.testing.assert_frame_equal(synthetic.obs, before[1])
    assert synthetic.uns["cellsynth"] == before[2]
    original = evaluated["metrics"]
    assert value(frame, "fresh", ev.PAPER, "wd") == pytest.approx(value(original, "fresh", ev.PAPER, "wd"))
    assert ev.PAPER_UPSAMPLE not in set(frame["protocol"])
    with pytest.raises(ValueError, match="genes"):
        ev.generator_metrics(train, test, synthetic[:, :-1].copy(), None, evaluated["space"], evaluated["split"],
                             evaluated["real"], SETTINGS, dataset="tiny", generator="fresh", fold=0)


def test_tables_and_markdown(evaluated):
    metrics = evaluated["metrics"]
    table1 = ev.paper_table(metrics)
    assert list(table1.columns) == ["metric", ev.REAL_TRAIN_VS_TEST, ev.FLOOR, "fresh", "train_copy (sanity)"]
    assert table1["metric"].tolist() == ["WD ↓", "CD ↓", "MMD ↓"]
    assert table1.loc[0, ev.REAL_TRAIN_VS_TEST] == f"{value(metrics, ev.REAL_TRAIN_VS_TEST, ev.PAPER, 'wd'):.4g}"
    table3 = ev.utility_table(metrics)
    assert "F1 (macro) ↑" in table3["metric"].tolist() and "F1 [type_0] (n = 40) ↑" in table3["metric"].tolist()
    assert table3.loc[table3["metric"] == "F1 (macro) ↑", "train_copy (sanity)"].item() == "—"  # no utility run
    honest = ev.honest_table(metrics)
    assert ev.FLOOR in honest.columns and (honest[ev.FLOOR].str.contains(r"\(×1\.00\)") | (honest["metric"] ==
                                           "MMD unbiased ↓")).all()
    per_type = ev.per_type_table(metrics)
    assert set(per_type["cell_type"]) == {"type_0", "type_1", "type_2"}
    markdown = ev.to_markdown(table1, "Table 1", ["a note"])
    assert markdown.startswith("## Table 1") and "| metric | real train vs test |" in markdown
    assert markdown.count("\n|") == 1 + 1 + 3 - 1 + 1 and "a note" in markdown
    # two folds: mean ± sd
    second = metrics.assign(fold=1, value=metrics["value"] * 1.1)
    two = ev.paper_table(pd.concat([metrics, second], ignore_index=True))
    assert "±" in two.loc[0, "fresh"]
    summary = ev.summarise(pd.concat([metrics, second], ignore_index=True))
    assert (summary.loc[summary["mean"].notna(), "n_folds"] == 2).all()  # NaN values are not counted


def test_report_is_self_contained_and_holds_the_tables(evaluated, fold):
    train, test, generators = fold
    metrics = evaluated["metrics"]
    png = figure_to_png(ev.plot_metrics_vs_floor(metrics), dpi=40)
    pca = figure_to_png(ev.plot_reference_pca(train, test, generators, evaluated["space"], fold=0), dpi=40)
    curves = figure_to_png(ev.plot_training_curves([pd.DataFrame(
        {"generator": "fresh", "fold": 0, "epoch": [0, 1, 0, 1], "series": ["train_loss"] * 2 + ["val_loss"] * 2,
         "value": [3.0, 2.0, 3.5, 2.5]}), pd.DataFrame()]), dpi=40)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and pca[:4] == curves[:4] == png[:4]
    fragment = ev.evaluation_section(
        "tiny",
        tables=[Table("Table 1", ev.paper_table(metrics), ["note <1>"], "table-1"),
                Table("Honest", ev.honest_table(metrics), (), "honest")],
        figures=[Figure("bars", png, "caption"), Figure("pca", pca)],
        summary_lines=["Folds: 0"],
    )
    assert section_dataset(fragment) == "tiny" and fragment.startswith('<section id="evaluation"')
    text = page(title="cellsynth evaluation: tiny", sections=[fragment],
                parameters={"evaluation": {"seed": 0}, "folds_to_run": [0]})
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, flags=re.I)
    assert "<script" not in text.lower() and "http" not in text
    assert text.count('src="data:image/png;base64,') == 2
    assert "<table" in text and "real (B vs A floor)" in text and "WD ↓" in text and "note &lt;1&gt;" in text
    assert "How to read this" in text and "seed: 0" in text and "<li>Folds: 0</li>" in text
    assert '<a href="#table-1">Table 1</a>' in text and '<a href="#evaluation">' in text


def test_cells_with_non_finite_values_are_left_out_and_counted(fold, evaluated):
    train, test, generators = fold
    broken = generators["fresh"].copy()
    broken.X[[0, 5, 7]] = np.nan
    broken.X[9, 3] = np.inf
    frame, sample = ev.generator_metrics(train, test, broken, broken[:30], evaluated["space"], evaluated["split"],
                                         evaluated["real"], SETTINGS, dataset="tiny", generator="fresh", fold=0)
    assert value(frame, "fresh", ev.RUN, "nonfinite_cells_synthetic") == 4
    assert value(frame, "fresh", ev.RUN, "nonfinite_cells_upsample") == 4
    assert value(frame, "fresh", ev.PAPER, "n_cells_compared") == 116
    assert not set(sample["position"]) & {0, 5, 7, 9}
    assert broken.obs_names[sample["position"]].tolist() == sample["cell"].tolist()
    assert np.isfinite(frame.loc[frame["protocol"] == ev.PAPER, "value"]).all()
    utility = ev.utility_metrics(train, test, broken[:30], SETTINGS, dataset="tiny", fold=0, generator="fresh")
    assert value(utility, "fresh", ev.UTILITY, "n_train_extra") == 26


def _utility_rows(f1_by_generator: dict[str, list[float]]) -> pd.DataFrame:
    """Long metrics rows of macro F1 per fold, as the evaluation pipeline writes them."""
    return pd.DataFrame(
        [
            {"dataset": "tiny", "generator": generator, "fold": fold, "protocol": ev.UTILITY,
             "cell_type": ev.protocol.ALL_TYPES, "metric": "f1_macro", "value": value}
            for generator, values in f1_by_generator.items()
            for fold, value in enumerate(values)
        ]
    )


def test_utility_verdict_names_the_largest_uplift_and_judges_smote_against_the_spread():
    consistent = _utility_rows({
        ev.REAL_ONLY: [0.70, 0.72, 0.71],
        "smote": [0.75, 0.77, 0.76],
        "maf": [0.80, 0.81, 0.82],            # +0.05 ± 0.01 over smote: beyond the spread
        "train_copy": [0.71, 0.73, 0.72],
    })
    verdict = ev.tables.utility_verdict(consistent)
    assert "Largest F1 (macro) uplift over real-only (0.710): maf (+0.100" in verdict
    assert "beats smote beyond the fold-to-fold spread: maf (+0.050 ± 0.010)" in verdict

    noisy = _utility_rows({
        ev.REAL_ONLY: [0.70, 0.72, 0.71],
        "smote": [0.75, 0.77, 0.76],
        "maf": [0.78, 0.72, 0.77],            # -0.003 ± 0.04: within the spread
    })
    verdict = ev.tables.utility_verdict(noisy)
    assert "Largest F1 (macro) uplift over real-only (0.710): smote (+0.050 ± 0.000 sd over 3 folds)" in verdict
    assert "no trained generator beats smote beyond the fold-to-fold spread (closest: maf" in verdict

    one_fold = _utility_rows({ev.REAL_ONLY: [0.70], "smote": [0.75], "maf": [0.80]})
    assert "with one fold there is no spread" in ev.tables.utility_verdict(one_fold)
    assert "smote was not run" in ev.tables.utility_verdict(_utility_rows({ev.REAL_ONLY: [0.7], "maf": [0.8]}))
