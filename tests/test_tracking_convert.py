"""MLflow converters: a short stable set of headline metrics per generator run, clean type names."""

from __future__ import annotations

import pandas as pd

from cellsynth.tracking.convert import HEADLINE_METRICS, METRICS, key_part


def test_key_part_is_stable_and_readable():
    assert key_part("CD14+ Mono") == "CD14plus_Mono"
    assert key_part("FCGR3A+ Mono") == "FCGR3Aplus_Mono"
    assert key_part("CD4- T (naive)") == "CD4minus_T_naive"
    assert key_part("B") == "B"


def test_evaluation_of_generator_rows():
    frame = pd.DataFrame(
        [("honest", "all", "c2st_auc", 0.9), ("honest", "all", "wd_ratio_to_floor", 3.0),
         ("honest", "CD14+ Mono", "c2st_auc", 0.7), ("run", "all", "fit_seconds", 5.0),
         ("utility", "all", "f1_macro", 0.8)],
        columns=["protocol", "cell_type", "metric", "value"],
    )
    rows = METRICS["evaluation_of_generator"](frame)
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert dict((k, v) for k, v, _ in rows if "/" not in k) == {"c2st": 0.9, "f1_macro": 0.8}
    assert "eval/honest/c2st_auc/CD14plus_Mono" in keys and "eval/run/fit_seconds" not in keys
    assert set(HEADLINE_METRICS) >= {"c2st", "wd", "precision", "recall", "memorisation", "f1_macro"}
    collected = frame.assign(generator="maf", fold=0)
    collected = pd.concat([collected, collected.assign(generator="real (B vs A floor)")])
    assert METRICS["ratios_by_generator"](collected) == [("x_floor/maf/wd", 3.0, 0)]
