"""What the one training loop tells the terminal: epochs of the cap, early-stopping state, a closing line."""

from __future__ import annotations

import logging

import numpy as np

from cellsynth.generators.base import TrainingHistory
from cellsynth.generators.maf import MAFGenerator
from cellsynth.generators.training import LoopSettings, progress_format, progress_postfix, training_summary

SMALL = {"n_layers": 2, "hidden_features": 32, "batch_size": 32}


def test_early_stopping_leaves_a_line_naming_the_kept_epoch(tiny_adata_factory, caplog):
    adata = tiny_adata_factory(n_cells=120, n_genes=10, n_types=3, seed=4)
    model = MAFGenerator(label_key="cell_type", **SMALL, learning_rate=3e-2, epochs=200, patience=2)
    with caplog.at_level(logging.INFO, logger="cellsynth.generators.training"):
        history = model.fit(adata, seed=0, progress=False)
    assert history.stopped_early
    lines = [r.getMessage() for r in caplog.records if r.name == "cellsynth.generators.training"]
    assert len(lines) == 1
    best = int(np.argmin(history.val_loss))
    assert f"stopped at epoch {len(history.train_loss)} of 200 (patience 2)" in lines[0]
    assert f"kept epoch {best + 1}, validation loss {history.val_loss[best]:.4g}" in lines[0]


def test_summary_without_early_stop_or_validation():
    settings = LoopSettings(epochs=3, batch_size=8, patience=5, description="moe")
    ran_all = TrainingHistory(train_loss=[3.0, 2.0, 1.0], val_loss=[3.0, 2.5, 2.7], best_epoch=1)
    assert training_summary(settings, ran_all, 2.5) == "moe: ran all 3 of 3 epochs; kept epoch 2, validation loss 2.5"
    unscored = TrainingHistory(train_loss=[3.0, 2.0, 1.0])
    assert training_summary(settings, unscored, float("inf")).endswith("no validation slice, kept the last epoch's weights")


def test_postfix_counts_patience_down():
    metrics = {"train_loss": 2.0, "val_loss": 2.5}
    assert progress_postfix(metrics, None, 0, None) == {"train_loss": "2", "val_loss": "2.5"}
    assert progress_postfix(metrics, 4, 2, 5) == {"train_loss": "2", "val_loss": "2.5", "best": "5", "patience": "3/5"}
    assert "at most {remaining} left" in progress_format(True)
    assert "at most" not in progress_format(False)
