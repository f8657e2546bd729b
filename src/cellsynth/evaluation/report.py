"""The evaluation's part of the report: how to read it, and its section (built by :mod:`cellsynth.reporting.html`)."""

from __future__ import annotations

from collections.abc import Sequence

from cellsynth.reporting.html import Figure, Table, section, table_html

__all__ = ["HOW_TO_READ", "SECTION_ID", "SECTION_TITLE", "evaluation_section"]

SECTION_ID = "evaluation"
SECTION_TITLE = "Evaluation: synthetic cells against real cells"

HOW_TO_READ = """
<p>The <b>verdict</b> above reads the <b>fair protocol</b>: the test cells are split into halves A and B
with several seeds (mean ± sd over these repeats; over folds when several ran); the floor is B vs A, and
each generator's cells are compared with A in a StandardScaler + PCA space fitted on <em>both</em> sets, so
neither is in-sample alone. Detection (C2ST AUC) is read as its excess over the floor's; memorisation is
measured in a space fitted on half A only; <b>within-type</b> structure is the detection of cells minus
their type's mean and the gene–gene correlation preservation of each type's top-100 genes (scDesign3). A ✗
is called only beyond the threshold and beyond <code>spread_factor</code> (default 2) × its uncertainty (with several folds, the standard error
of the per-fold difference from the floor); sanity baselines are never named best.</p>
<p>The paper's protocol and the honest protocol below work in the paper's <b>reference space</b>: a
StandardScaler and a PCA (50 components) fitted on the fold's <em>real training cells only</em>, into which
held-out and synthetic cells are projected.</p>
<ul>
<li><b>The paper's protocol</b> (Table 1) compares each generator's cells (as many as the test cells,
in training proportions) with the test cells, by WD (mean 1-D Wasserstein distance over PCs), CD (mean
absolute difference of the PC correlation matrices) and MMD (biased RBF estimator over six γ). All three:
<b>lower is better</b>. Its "real train vs test" column is <em>not a floor</em>: the training cells are
in-sample for the PCA (their projection carries its overfit), so simple generators can "beat" real data.</li>
<li><b>The floor</b> (<code>real (B vs A floor)</code>) is what real data achieves when compared like for
like: the test cells are split (stratified by type, seeded) into halves A and B, and B is compared with A.
In the <b>honest protocol</b> every generator contributes as many cells as B (with B's type counts when it
has the types) and is compared with A in the same way; <b>(×r)</b> is the ratio to the floor, so ×1 is as
good as real data. For lower-is-better metrics ×r &gt; 1 is worse; for precision/recall ×r &lt; 1 is worse.</li>
<li><b>C2ST AUC</b>: cross-validated ROC-AUC of a gradient-boosting classifier telling real from synthetic
cells; 0.5 = indistinguishable (the floor is ≈ 0.5), 1 = trivially separable. <b>Lower is better, down to 0.5.</b></li>
<li><b>k-NN precision / recall</b> (Kynkäänniemi et al. 2019): precision = share of synthetic cells inside
the real cells' k-NN manifold (fidelity); recall = share of real cells inside the synthetic manifold
(coverage, low for mode collapse). <b>Higher is better</b>; the floor shows what real data reaches.</li>
<li><b>Memorisation</b>: median distance of the compared cells to their nearest training cell, divided by
that of real held-out cells (half A). ≈ 1 is healthy; ≪ 1 means the generator copies training cells
(privacy / overfitting), ≫ 1 means samples far from every real cell (poor fidelity). The close-to-train
fraction is the share of cells closer to a training cell than 5% of real held-out cells are (≈ 0.05 ok).</li>
<li><b>Sanity baselines</b> have a known answer and show what each metric can and cannot see:
<code>train_copy</code> (copies of training cells: must be flagged by memorisation),
<code>gene_shuffle</code> (each gene resampled independently within a type: no gene-gene structure) and
<code>class_gaussian_pca</code> (one Gaussian per type in a PCA space). A metric on which a baseline looks
as good as real data cannot tell that failure apart.</li>
<li><b>Classification utility</b> (Table 3): a random forest (entropy, 100 trees) on the HVG expression,
trained on the real training cells alone ("real only") or with each generator's up-sampling cells (rare
types topped up to the Q3 class size), scored on the test cells. <b>Higher is better</b>; the per-type F1
of the rare types is where synthetic cells should help.</li>
<li>Values are fold means (± sd over folds when several folds ran).</li>
</ul>
"""


def evaluation_section(dataset: str, tables: Sequence[Table], figures: Sequence[Figure],
                       summary_lines: Sequence[str] = (), lead: Sequence[Table] = ()) -> str:
    """The evaluation's section fragment: facts, the ``lead`` tables (the verdict), how to read it, the
    other tables and the figures."""
    intro = "\n".join([*(table_html(t) for t in lead),
                       f'<h3 id="how-to-read">How to read this</h3>\n{HOW_TO_READ.strip()}'])
    return section(SECTION_ID, SECTION_TITLE, dataset=dataset, tables=tables,
                   figures=figures, facts=summary_lines, intro_html=intro)
