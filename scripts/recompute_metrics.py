#!/usr/bin/env python
"""Recompute the evaluation's metrics from the saved files, independently of ``cellsynth``, and compare.

Uses numpy, scipy, scikit-learn, pandas, anndata and PyYAML directly (not ``cellsynth.metrics`` nor
``cellsynth.evaluation``), reloads what the pipelines saved (paths from ``conf/base/catalog*.yml``)
and checks ``data/08_reporting/<dataset>/metrics.parquet`` row by row. Prints a table of the largest
differences per protocol × metric and exits 1 when any value disagrees beyond the tolerance, when a
row it recomputes is missing from the table, or when a protocol check fails.

The protocol (as documented in ``cellsynth.evaluation``), per fold *k* with ``seed`` and ``n_pca``
from ``conf/base/parameters_evaluation.yml`` (``--seed``/``--n-pca`` override):

* Reference space: ``StandardScaler().fit(train.X)`` then ``PCA(min(n_pca, cells, genes),
  random_state=seed)`` fitted on the scaled training cells (float64); every set is projected with both.
* ``paper``: WD = mean over PCs of ``scipy.stats.wasserstein_distance``; CD = mean |Pearson(test) −
  Pearson(set)| over the full PC×PC matrix (a constant PC correlates 0); MMD = biased
  ``mean Kxx + mean Kyy − 2 mean Kxy``, ``k = exp(−γ‖x−y‖²)``, averaged over γ ∈ {2, 1, 0.5, 0.1, 0.01,
  0.005}. Sets: each generator's ``synthetic`` cells vs all test cells; ``real train vs test``
  = all training cells vs all test cells. ``paper_upsample``: training + ``upsample`` cells vs test.
* ``honest``: halves A/B from the saved ``fold_<k>.honest_split`` (checked: disjoint, all test cells,
  stratified: per type the halves differ by ≤ 1 cell, a singleton type sits in A); the generator's
  cells from the saved ``<generator>.fold_<k>.honest_sample`` (checked: |B| cells, and B's count of
  every type the generator has enough of). Against A: WD, CD, MMD, unbiased MMD (diagonals dropped),
  k-NN precision/recall (k from the parameters; radius of a point = distance to its k-th nearest other
  point of its own set; precision = share of the compared cells within some A radius, recall = share
  of A within some compared-cell radius), memorisation = median nearest-training-cell distance of the
  compared cells ÷ that of A, close fraction = share of compared cells nearer to a training cell than
  the 5 % quantile of A's distances; ``*_ratio_to_floor`` = value ÷ the floor's (B vs A) value (when
  > 0). C2ST is not recomputed (a classifier's cross-validation; its rows are only checked to lie in [0, 1]).
* Synthetic/up-sampling cells with a non-finite value are left out (and counted in the ``run`` rows
  ``nonfinite_cells_*``).
* Per cell type: the same comparisons within every type present in the table (their set is checked:
  types with ≥ ``min_cells_per_type`` cells on both sides).
* ``fair`` and ``within_type`` (unless ``--skip-fair``), for ``r < fair.honest_repeats`` with seed
  ``seed + r``: halves A/B of the test cells (stratified, re-implemented here), the generator's cells
  matched to B's type counts (or B itself for the floor), exact duplicate cells counted
  (``duplicate_fraction``) and dropped; StandardScaler + PCA fitted on A ∪ compared cells: WD, CD, MMD,
  k-NN precision/recall; memorisation and close fraction of the compared cells (duplicates kept) in a
  space fitted on A alone, relative to B; ``correlation_r`` = per type with enough cells on both
  sides, Pearson r of the upper triangles of the gene × gene correlation matrices of the type's top
  genes (by A's mean), averaged over types. Mean over repeats and ``<metric>_repeat_sd`` (ddof 1).
  The detection AUCs (fair and within-type) are only checked to lie in [0, 1].
* ``utility`` (unless ``--skip-utility``): ``RandomForestClassifier(criterion="entropy",
  n_estimators, random_state=seed)`` on ``train.X`` (stacked as CSR with the ``upsample`` cells),
  scored on ``test.X``: accuracy, macro/weighted precision, recall, F1, per-type F1.

Usage: ``.venv/bin/python scripts/recompute_metrics.py [--project .] [--rtol 1e-6] [--skip-utility]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

GAMMAS = (2.0, 1.0, 0.5, 0.1, 0.01, 0.005)
REAL = {"real train vs test", "real (B vs A floor)", "real only"}
FLOOR = "real (B vs A floor)"
BLOCK = 2_000_000  # distance-matrix entries per block


# ----------------------------------------------------------------------------- configuration
def load_yaml_dir(project: Path, pattern: str) -> dict:
    merged: dict = {}
    for path in sorted((project / "conf" / "base").glob(pattern)):
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


DATASET: str | None = None
"""The dataset whose outputs are read (``--dataset``; default: ``dataset.name`` of ``conf/base/globals.yml``)."""


class Paths:
    """File paths of catalog entries (the factory patterns of ``conf/base/catalog*.yml``) of one dataset."""

    def __init__(self, project: Path):
        self.project = project
        self.catalog = load_yaml_dir(project, "catalog*.yml")
        self.dataset = DATASET or yaml.safe_load((project / "conf" / "base" / "globals.yml").read_text())["dataset"]["name"]

    def __call__(self, entry: str, **fields) -> Path:
        # Outputs live under data/<layer>/<dataset>/ (the catalog's `_dataset` template value).
        return self.project / self.catalog[entry]["filepath"].replace("${_dataset}", self.dataset).format(**fields)


# ----------------------------------------------------------------------------- metrics (independent)
def finite_only(adata):
    """The cells with only finite values (the evaluation leaves the others out and counts them)."""
    X = adata.X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return adata[np.isfinite(X).all(axis=1)], np.isfinite(X).all(axis=1)


def dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


def reference_space(train_X, n_pca: int, seed: int):
    X = dense(train_X)
    scaler = StandardScaler().fit(X)
    pca = PCA(n_components=min(n_pca, *X.shape), random_state=seed).fit(scaler.transform(X))
    return lambda M: pca.transform(scaler.transform(dense(M)))


def wd(a, b) -> float:
    return float(np.mean([wasserstein_distance(a[:, j], b[:, j]) for j in range(a.shape[1])]))


def corr(x) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(x, rowvar=False)
    c = np.nan_to_num(c, nan=0.0)
    np.fill_diagonal(c, 1.0)
    return c


def cd(a, b) -> float:
    return float(np.mean(np.abs(corr(a) - corr(b))))


def kernel_sums(a, b) -> np.ndarray:
    rows = max(1, BLOCK // max(1, len(b)))
    sums = np.zeros(len(GAMMAS))
    for start in range(0, len(a), rows):
        d2 = cdist(a[start:start + rows], b, "sqeuclidean")
        sums += [np.exp(-g * d2).sum() for g in GAMMAS]
    return sums


def mmd(a, b, unbiased: bool = False) -> float:
    n, m = len(a), len(b)
    if unbiased:
        kxx = (kernel_sums(a, a) - n) / (n * (n - 1))
        kyy = (kernel_sums(b, b) - m) / (m * (m - 1))
    else:
        kxx, kyy = kernel_sums(a, a) / n**2, kernel_sums(b, b) / m**2
    return float(np.mean(kxx + kyy - 2 * kernel_sums(a, b) / (n * m)))


def min_distance(q, ref) -> np.ndarray:
    rows = max(1, BLOCK // max(1, len(ref)))
    return np.concatenate([cdist(q[s:s + rows], ref).min(axis=1) for s in range(0, len(q), rows)])


def covered(q, ref, k: int) -> np.ndarray:
    radius = NearestNeighbors(n_neighbors=k + 1).fit(ref).kneighbors(ref)[0][:, k]
    rows = max(1, BLOCK // max(1, len(ref)))
    return np.concatenate([(cdist(q[s:s + rows], ref) <= radius[None, :]).any(axis=1)
                           for s in range(0, len(q), rows)])


def honest_set(ref, cand, z_train, k: int) -> dict:
    d_cand, d_ref = min_distance(cand, z_train), min_distance(ref, z_train)
    return {
        "wd": wd(ref, cand), "cd": cd(ref, cand), "mmd": mmd(ref, cand), "mmd_unbiased": mmd(ref, cand, True),
        "precision": float(covered(cand, ref, k).mean()), "recall": float(covered(ref, cand, k).mean()),
        "memorization": float(np.median(d_cand) / np.median(d_ref)),
        "memorization_close_fraction": float(np.mean(d_cand < np.quantile(d_ref, 0.05))),
        "n_cells_reference": len(ref), "n_cells_compared": len(cand),
    }


def paper_set(ref, cand) -> dict:
    return {"wd": wd(ref, cand), "cd": cd(ref, cand), "mmd": mmd(ref, cand),
            "n_cells_reference": len(ref), "n_cells_compared": len(cand)}


def utility(train, test, extra, seed: int, n_estimators: int) -> dict:
    X, y = train.X, train.obs["cell_type"].astype(str).to_numpy()
    if extra is not None and extra.n_obs:
        X = sp.vstack([sp.csr_matrix(train.X), sp.csr_matrix(extra[:, train.var_names].X)], format="csr")
        y = np.concatenate([y, extra.obs["cell_type"].astype(str).to_numpy()])
    y_test = test.obs["cell_type"].astype(str).to_numpy()
    forest = RandomForestClassifier(criterion="entropy", n_estimators=n_estimators, random_state=seed, n_jobs=-1)
    pred = forest.fit(X, y).predict(test[:, train.var_names].X)
    out = {("all", "accuracy"): accuracy_score(y_test, pred)}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_test, pred, average=avg, zero_division=0)
        out |= {("all", f"precision_{avg}"): p, ("all", f"recall_{avg}"): r, ("all", f"f1_{avg}"): f}
    types = np.unique(y_test)
    out |= {(t, "f1"): v for t, v in zip(types, f1_score(y_test, pred, labels=types, average=None, zero_division=0),
                                         strict=True)}
    return out


# ----------------------------------------------------------------------------- protocol checks
def check_split(split: pd.DataFrame, test) -> list[str]:
    problems = []
    if split["cell"].astype(str).tolist() != list(test.obs_names):
        problems.append("honest split cells are not the test cells in order")
    if set(split["half"]) - {"A", "B"}:
        problems.append("honest split has halves other than A/B")
    counts = split.groupby(["cell_type", "half"]).size().unstack(fill_value=0)
    for half in ("A", "B"):
        if half not in counts:
            counts[half] = 0
    labels = test.obs["cell_type"].astype(str)
    if not (split["cell_type"].astype(str).to_numpy() == labels.to_numpy()).all():
        problems.append("honest split labels differ from the test labels")
    bad = counts[((counts["A"] - counts["B"]).abs() > 1) | ((counts["A"] + counts["B"] == 1) & (counts["A"] == 0))]
    if len(bad):
        problems.append(f"honest split not stratified for {list(bad.index)}")
    return problems


def check_sample(sample: pd.DataFrame, synthetic, finite_mask: np.ndarray, b_counts: pd.Series) -> list[str]:
    problems = []
    positions = sample["position"].to_numpy()
    if len(set(positions)) != len(positions):
        problems.append("honest sample repeats cells")
    if not finite_mask[positions].all():
        problems.append("honest sample holds cells with non-finite values")
    if list(synthetic.obs_names[positions]) != sample["cell"].astype(str).tolist():
        problems.append("honest sample cell names do not match the synthetic file")
    if len(positions) != min(int(b_counts.sum()), int(finite_mask.sum())):
        problems.append(f"honest sample has {len(positions)} cells, expected |B| = {int(b_counts.sum())}")
    labels = synthetic.obs["cell_type"].astype(str).to_numpy()[finite_mask]
    have = pd.Series(labels).value_counts()
    got = synthetic.obs["cell_type"].astype(str).to_numpy()[positions]
    got_counts = pd.Series(got).value_counts()
    for cell_type, n in b_counts.items():
        if got_counts.get(cell_type, 0) < min(n, have.get(cell_type, 0)):
            problems.append(f"honest sample has too few {cell_type!r} cells")
    return problems


# ----------------------------------------------------------------------------- main
def recompute(project: Path, metrics: pd.DataFrame, params: dict, skip_utility: bool) -> tuple[pd.DataFrame, list]:
    paths = Paths(project)
    seed, n_pca, k = int(params["seed"]), int(params["n_pca"]), int(params.get("knn_k", 5))
    min_cells = int(params.get("min_cells_per_type", 20))
    n_estimators = int((params.get("utility") or {}).get("n_estimators", 100))
    dataset = str(metrics["dataset"].iloc[0])
    rows, problems = [], []

    def add(generator, fold, protocol, values: dict, cell_type="all"):
        rows.extend((dataset, generator, fold, protocol, cell_type, m, float(v)) for m, v in values.items())

    for fold in sorted(metrics["fold"].unique()):
        fold = int(fold)
        in_fold = metrics[metrics["fold"] == fold]
        train = ad.read_h5ad(paths("fold_{k}.train", k=fold))
        test = ad.read_h5ad(paths("fold_{k}.test", k=fold))
        project_to = reference_space(train.X, n_pca, seed)
        z_train, z_test = project_to(train.X), project_to(test[:, train.var_names].X)
        y_train, y_test = train.obs["cell_type"].astype(str).to_numpy(), test.obs["cell_type"].astype(str).to_numpy()
        split = pd.read_parquet(paths("fold_{k}.honest_split", k=fold))
        problems += [f"fold {fold}: {p}" for p in check_split(split, test)]
        half = split["half"].to_numpy()
        ia, ib = np.flatnonzero(half == "A"), np.flatnonzero(half == "B")
        b_counts = pd.Series(y_test[ib]).value_counts()

        def types_in(generator, protocol, _in_fold=in_fold):
            part = _in_fold[(_in_fold["generator"] == generator) & (_in_fold["protocol"] == protocol)]
            return sorted(set(part["cell_type"]) - {"all"})

        def expected_types(ref_labels, cand_labels):
            r, c = pd.Series(ref_labels).value_counts(), pd.Series(cand_labels).value_counts()
            return sorted(t for t in set(r.index) & set(c.index) if r[t] >= min_cells and c[t] >= min_cells)

        # real rows
        for protocol in ("paper", "paper_upsample"):
            add("real train vs test", fold, protocol, paper_set(z_test, z_train))
        floor = honest_set(z_test[ia], z_test[ib], z_train, k)
        add(FLOOR, fold, "honest", floor)
        floors = {"all": floor}
        for t in types_in("real train vs test", "paper"):
            add("real train vs test", fold, "paper", paper_set(z_test[y_test == t], z_train[y_train == t]), t)
        if types_in("real train vs test", "paper") != expected_types(y_test, y_train):
            problems.append(f"fold {fold}: per-type rows of train vs test are not the types with >= {min_cells} cells")
        for t in types_in(FLOOR, "honest"):
            floors[t] = honest_set(z_test[ia][y_test[ia] == t], z_test[ib][y_test[ib] == t], z_train, k)
            add(FLOOR, fold, "honest", floors[t], t)
        if types_in(FLOOR, "honest") != expected_types(y_test[ia], y_test[ib]):
            problems.append(f"fold {fold}: per-type floor rows are not the types with >= {min_cells} cells")
        for cell_type, values in floors.items():
            add(FLOOR, fold, "honest", ratios(values, values), cell_type)
        if not skip_utility:
            for (t, m), v in utility(train, test, None, seed, n_estimators).items():
                add("real only", fold, "utility", {m: v}, t)

        # generators
        for generator in sorted(set(in_fold["generator"]) - REAL):
            synthetic = ad.read_h5ad(paths("{generator}.fold_{k}.synthetic", generator=generator, k=fold))
            finite_synth, finite_mask = finite_only(synthetic)
            add(generator, fold, "run", {"nonfinite_cells_synthetic": int((~finite_mask).sum())})
            z_all = np.full((synthetic.n_obs, z_train.shape[1]), np.nan)
            z_all[finite_mask] = project_to(finite_synth[:, train.var_names].X)
            z_synth = z_all[finite_mask]
            y_all = synthetic.obs["cell_type"].astype(str).to_numpy()
            y_synth = y_all[finite_mask]
            add(generator, fold, "paper", paper_set(z_test, z_synth))
            for t in types_in(generator, "paper"):
                add(generator, fold, "paper", paper_set(z_test[y_test == t], z_synth[y_synth == t]), t)
            if types_in(generator, "paper") != expected_types(y_test, y_synth):
                problems.append(f"fold {fold} {generator}: per-type paper rows are not the expected types")
            upsample_path = paths("{generator}.fold_{k}.upsample", generator=generator, k=fold)
            upsample = ad.read_h5ad(upsample_path) if upsample_path.is_file() else None
            if upsample is not None and upsample.n_obs:
                upsample, up_mask = finite_only(upsample)
                add(generator, fold, "run", {"nonfinite_cells_upsample": int((~up_mask).sum())})
                z_up = project_to(upsample[:, train.var_names].X)
                add(generator, fold, "paper_upsample", paper_set(z_test, np.vstack([z_train, z_up])))
            sample = pd.read_parquet(paths("{generator}.fold_{k}.honest_sample", generator=generator, k=fold))
            problems += [f"fold {fold} {generator}: {p}" for p in check_sample(sample, synthetic, finite_mask, b_counts)]
            pos = sample["position"].to_numpy()
            z_s, y_s = z_all[pos], y_all[pos]
            values = {"all": honest_set(z_test[ia], z_s, z_train, k)}
            for t in types_in(generator, "honest"):
                values[t] = honest_set(z_test[ia][y_test[ia] == t], z_s[y_s == t], z_train, k)
            if types_in(generator, "honest") != expected_types(y_test[ia], y_s):
                problems.append(f"fold {fold} {generator}: per-type honest rows are not the expected types")
            for cell_type, vals in values.items():
                add(generator, fold, "honest", vals, cell_type)
                if cell_type in floors:
                    add(generator, fold, "honest", ratios(vals, floors[cell_type]), cell_type)
            if not skip_utility and upsample is not None:
                for (t, m), v in utility(train, test, upsample, seed, n_estimators).items():
                    add(generator, fold, "utility", {m: v}, t)
        c2st = in_fold[in_fold["metric"] == "c2st_auc"]["value"]
        if not c2st.between(0, 1).all():
            problems.append(f"fold {fold}: C2ST AUC outside [0, 1]")
    columns = ["dataset", "generator", "fold", "protocol", "cell_type", "metric", "value"]
    return pd.DataFrame(rows, columns=columns), problems


# ----------------------------------------------------------------------------- fair protocol
def halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified halves: per label in sorted order, a seeded permutation; ⌊n/2⌋ to each half, the odd
    cell to the smaller half so far (coin flip on a tie), a singleton to A."""
    rng = np.random.default_rng(seed)
    a, b, size_a, size_b = [], [], 0, 0
    for label in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n = len(idx)
        to_a = 1 if n == 1 else n // 2 + int(n % 2 == 1 and (size_a < size_b or (size_a == size_b and rng.integers(2) == 0)))
        a.append(idx[:to_a])
        b.append(idx[to_a:])
        size_a, size_b = size_a + to_a, size_b + n - to_a
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def matched(labels: np.ndarray, target: pd.Series, seed: int) -> np.ndarray:
    """Per type of ``target`` in sorted order, min(target, available) cells without replacement; a
    shortfall filled at random from the rest."""
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == t), min(int(target[t]), int((labels == t).sum())), replace=False)
              for t in sorted(target.index) if (labels == t).any() and int(target[t]) > 0]
    picked = np.concatenate(picked).astype(np.int64) if picked else np.array([], dtype=np.int64)
    shortfall = int(target.sum()) - len(picked)
    if shortfall > 0:
        rest = np.setdiff1d(np.arange(len(labels)), picked)
        picked = np.concatenate([picked, rng.choice(rest, min(shortfall, len(rest)), replace=False)])
    return np.sort(picked)


def correlation_r(ref, y_ref, cand, y_cand, n_genes: int, min_cells: int) -> float:
    values = []
    for t in sorted(set(y_ref) & set(y_cand)):
        r, c = ref[y_ref == t], cand[y_cand == t]
        if len(r) < min_cells or len(c) < min_cells:
            continue
        genes = np.argsort(-r.mean(axis=0), kind="stable")[:n_genes]
        upper = np.triu_indices(len(genes), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            x, y = np.corrcoef(r[:, genes], rowvar=False)[upper], np.corrcoef(c[:, genes], rowvar=False)[upper]
        ok = np.isfinite(x) & np.isfinite(y)
        values.append(0.0 if ok.sum() < 3 or x[ok].std() == 0 or y[ok].std() == 0
                      else float(np.corrcoef(x[ok], y[ok])[0, 1]))
    return float(np.mean(values)) if values else np.nan


def fair_repeat(a, y_a, cand, y_cand, train_X, holdout, params: dict, seed: int) -> dict:
    n_pca, k, fair = int(params["n_pca"]), int(params.get("knn_k", 5)), params.get("fair") or {}
    out = {}
    if holdout is not None:
        project_to = reference_space(a, n_pca, int(params["seed"]))
        d_c, d_h = min_distance(project_to(cand), project_to(train_X)), min_distance(project_to(holdout), project_to(train_X))
        out["memorization"] = float(np.median(d_c) / np.median(d_h))
        out["memorization_close_fraction"] = float(np.mean(d_c < np.quantile(d_h, 0.05)))
    _, first = np.unique(cand, axis=0, return_index=True)
    keep = np.sort(first)
    out["duplicate_fraction"] = 1 - len(keep) / len(cand)
    cand, y_cand = cand[keep], y_cand[keep]
    project_to = reference_space(np.vstack([a, cand]), n_pca, int(params["seed"]))
    za, zc = project_to(a), project_to(cand)
    out.update({"wd": wd(za, zc), "cd": cd(za, zc), "mmd": mmd(za, zc),
                "precision": float(covered(zc, za, k).mean()), "recall": float(covered(za, zc, k).mean())})
    out["correlation_r"] = correlation_r(a, y_a, cand, y_cand, int(fair.get("correlation_genes", 100)),
                                         int(fair.get("correlation_min_cells", 20)))
    return out


def recompute_fair(project: Path, metrics: pd.DataFrame, params: dict) -> pd.DataFrame:
    """Protocols ``fair`` and ``within_type`` (all but the detection AUCs, which are only range-checked)."""
    paths, rows = Paths(project), []
    dataset, seed = str(metrics["dataset"].iloc[0]), int(params["seed"])
    repeats = int((params.get("fair") or {}).get("honest_repeats", 5))
    within = {"correlation_r"}
    for fold in sorted(metrics.loc[metrics["protocol"] == "fair", "fold"].unique()):
        fold = int(fold)
        train = ad.read_h5ad(paths("fold_{k}.train", k=fold))
        test = ad.read_h5ad(paths("fold_{k}.test", k=fold))
        X_test, y_test = dense(test[:, train.var_names].X), test.obs["cell_type"].astype(str).to_numpy()
        generators = sorted(set(metrics.loc[(metrics["protocol"] == "fair") & (metrics["fold"] == fold), "generator"]))
        for generator in generators:
            if generator != FLOOR:
                synthetic, _ = finite_only(ad.read_h5ad(paths("{generator}.fold_{k}.synthetic", generator=generator, k=fold)))
                X_s, y_s = dense(synthetic[:, train.var_names].X), synthetic.obs["cell_type"].astype(str).to_numpy()
            values = []
            for r in range(repeats):
                ia, ib = halves(y_test, seed + r)
                if generator == FLOOR:
                    cand, y_cand, holdout = X_test[ib], y_test[ib], None
                else:
                    pos = matched(y_s, pd.Series(y_test[ib]).value_counts(), seed + r)
                    cand, y_cand, holdout = X_s[pos], y_s[pos], X_test[ib]
                values.append(fair_repeat(X_test[ia], y_test[ia], cand, y_cand, train.X, holdout, params, seed + r))
            frame = pd.DataFrame(values)
            for metric in frame.columns:
                protocol = "within_type" if metric in within else "fair"
                sd = frame[metric].std(ddof=1) if frame[metric].notna().sum() > 1 else np.nan
                rows += [(dataset, generator, fold, protocol, "all", metric, float(frame[metric].mean())),
                         (dataset, generator, fold, protocol, "all", f"{metric}_repeat_sd", float(sd))]
    columns = ["dataset", "generator", "fold", "protocol", "cell_type", "metric", "value"]
    return pd.DataFrame(rows, columns=columns)


def ratios(values: dict, floor: dict) -> dict:
    out = {}
    for metric, v in values.items():
        if metric.startswith("n_cells"):
            continue
        f = floor.get(metric, np.nan)
        out[f"{metric}_ratio_to_floor"] = v / f if np.isfinite(f) and f > 0 else np.nan
    return out


def compare(saved: pd.DataFrame, recomputed: pd.DataFrame, rtol: float, atol: float) -> tuple[pd.DataFrame, int]:
    key = ["dataset", "generator", "fold", "protocol", "cell_type", "metric"]
    merged = recomputed.merge(saved, on=key, how="left", suffixes=("_recomputed", "_saved"), indicator=True)
    missing = merged[merged["_merge"] == "left_only"]
    a, b = merged["value_recomputed"].to_numpy(), merged["value_saved"].to_numpy()
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    merged["abs_diff"] = diff
    merged["ok"] = (merged["_merge"] == "left_only") | both_nan | (diff <= atol + rtol * np.abs(b))
    merged["metric_group"] = merged["metric"].str.replace(r"_ratio_to_floor$", " ratio", regex=True)
    merged["per_type"] = np.where(merged["cell_type"] == "all", "all", "per type")
    merged["is_missing"] = merged["_merge"] == "left_only"
    table = merged.groupby(["protocol", "metric_group", "per_type"]).agg(
        rows=("ok", "size"), max_abs_diff=("abs_diff", "max"), disagreeing=("ok", lambda s: int((~s).sum())),
        missing=("is_missing", "sum"),
    ).reset_index()
    if len(missing):
        print(f"{len(missing)} recomputed rows are missing from metrics.parquet, e.g.:")
        print(missing[key].head(10).to_string(index=False))
    bad = merged[~merged["ok"]]
    if len(bad):
        print("Disagreeing rows (first 20):")
        print(bad[key + ["value_saved", "value_recomputed", "abs_diff"]].head(20).to_string(index=False))
    return table, int(len(bad) + len(missing))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--metrics", type=Path, default=None, help="default: the catalog's evaluation_metrics")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--n-pca", type=int, default=None)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-9)
    parser.add_argument("--skip-utility", action="store_true", help="do not refit the random forests")
    parser.add_argument("--skip-fair", action="store_true", help="do not recompute the fair protocol")
    parser.add_argument("--dataset", default=None, help="dataset.name whose outputs to read (default: conf/base's)")
    args = parser.parse_args(argv)
    global DATASET
    DATASET = args.dataset

    project = args.project.resolve()
    params = dict(load_yaml_dir(project, "parameters*.yml").get("evaluation") or {})
    if args.seed is not None:
        params["seed"] = args.seed
    if args.n_pca is not None:
        params["n_pca"] = args.n_pca
    metrics_path = args.metrics or Paths(project)("evaluation_metrics")
    saved = pd.read_parquet(metrics_path)
    print(f"Recomputing {metrics_path} (seed {params['seed']}, n_pca {params['n_pca']}, "
          f"folds {sorted(saved['fold'].unique().tolist())}) ...")
    recomputed, problems = recompute(project, saved, params, args.skip_utility)
    if not args.skip_fair and (saved["protocol"] == "fair").any():
        recomputed = pd.concat([recomputed, recompute_fair(project, saved, params)], ignore_index=True)
        auc = saved[saved["protocol"].isin(["fair", "within_type"]) & (saved["metric"] == "c2st_auc")]["value"]
        if not auc.dropna().between(0, 1).all():
            problems.append("fair/within-type detection AUC outside [0, 1]")
    table, n_bad = compare(saved, recomputed, args.rtol, args.atol)
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for problem in problems:
        print(f"PROTOCOL CHECK FAILED: {problem}")
    print(f"{len(recomputed)} rows recomputed; {n_bad} disagree or are missing; "
          f"{len(problems)} protocol checks failed (rtol {args.rtol}, atol {args.atol}).")
    return 1 if n_bad or problems else 0


if __name__ == "__main__":
    sys.exit(main())
