"""Canonical names shared by every layer: AnnData columns, metric-table rows, generation modes.

Validation (:mod:`cellsynth.data.validation`) writes the user's label and batch columns under these
names, so everything after it reads one fixed schema whatever the input file called them.
"""

from __future__ import annotations

LABEL_KEY = "cell_type"
"""``obs`` column of the cell type, after validation."""
BATCH_KEY = "batch"
"""``obs`` column of the batch (one per dataset when several are integrated)."""
COUNTS_LAYER = "counts"
"""``layers`` entry holding the raw counts next to the log-normalised ``X``."""

ALL_TYPES = "all"
"""``cell_type`` of metric rows computed over every cell type together."""

REAL_TRAIN_VS_TEST = "real train vs test"
"""Row of the real training cells compared with the test cells (the paper's real-data column)."""
FLOOR = "real (B vs A floor)"
"""Row of the honest floor: test half B compared with half A."""
REAL_ONLY = "real only"
"""Row of the classifier trained on the real training cells alone."""
REAL_ROWS = (REAL_TRAIN_VS_TEST, FLOOR, REAL_ONLY)
SANITY_BASELINES = ("train_copy", "gene_shuffle", "class_gaussian_pca")
"""Reference generators with a known answer (copies, no gene-gene structure, per-type Gaussian)."""

GENERATION_MODES = ("matched", "upsample")
"""``matched``: as many cells as the test set in training proportions; ``upsample``: the paper's Q3 rule."""
