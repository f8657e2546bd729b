"""Draw docs/images/pancreas_qc_distributions.png: the QC distributions of the embedded pancreas files with the
thresholds the pancreas environments apply, and print what the Seurat PBMC3K cap would remove instead.

Usage: ``python scripts/pancreas_qc_figure.py`` (from the project root; reads data/01_raw, writes docs/images).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd

from cellsynth.config import PreprocessingSettings, QCSettings
from cellsynth.data import quality_control, validate_counts
from cellsynth.data.organism import MITO_PREFIX, detect_organism
from cellsynth.data.preprocess import qc_input_metrics
from cellsynth.data.qc_figures import plot_qc_distributions
from cellsynth.reporting.figures import figure_to_png

ROOT = Path(__file__).resolve().parents[1]
FILES = {  # name: (file, overrides of preprocessing.qc, as in the environments)
    "baron (human)": ("baron_human_pancreas_counts.h5ad", {}),
    "segerstolpe": ("segerstolpe_pancreas_2000genes_counts.h5ad", {"n_mads_genes": None}),
    "baron (mouse)": ("baron_mouse_pancreas_counts.h5ad", {}),
}


def main() -> None:
    settings = PreprocessingSettings()
    metrics, filtered, mito = {}, {}, {}
    for name, (file, overrides) in FILES.items():
        raw = ad.read_h5ad(ROOT / "data" / "01_raw" / file)
        counts, _ = validate_counts(raw, source=file, label_key="cell_type")
        prefixes = [MITO_PREFIX[detect_organism(counts.var_names, source=file)]]
        qc = QCSettings.from_params({**settings.qc.to_dict(), **overrides, "mito_prefixes": prefixes})
        filtered[name], summary = quality_control(counts, **{**qc.to_dict(), "mito_prefixes": prefixes}, source=file)
        metrics[name] = qc_input_metrics(counts, min_cells_per_gene=qc.min_cells_per_gene, mito_prefixes=prefixes)[0]
        mito[name] = bool(filtered[name].uns["qc"]["mito_genes"])
        print(f"\n{name}: {counts.n_obs} cells -> {filtered[name].n_obs} after QC")
        print(summary[["step", "n_cells", "threshold", "removed_per_type"]].to_string(index=False))
        capped = metrics[name][metrics[name]["n_genes"] >= 2500]
        print(f"the Seurat PBMC3K cap (< 2500 genes) would remove {len(capped)} cells: "
              + ", ".join(f"{t} {n}" for t, n in pd.Series(capped["cell_type"]).value_counts().items()))
    figure = plot_qc_distributions(metrics, {n: a.uns["qc"]["thresholds"] for n, a in filtered.items()}, mito)
    out = ROOT / "docs" / "images" / "pancreas_qc_distributions.png"
    out.write_bytes(figure_to_png(figure, dpi=90))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
