"""Typed settings: one frozen dataclass per parameters block, the only home of their defaults.

Each block of ``conf/base/parameters*.yml`` has a class here; nodes parse their block once, at the
node boundary (``GenerationSettings.from_params(generation)``), and work with typed attributes. A
key that is not a field is an error that lists the valid ones, a value outside a ``Literal`` is an
error that lists the choices, and a key the configuration leaves out takes the default written here,
which ``tests/test_config.py`` checks equals the one in ``conf/base`` (so an environment overriding a
block without some key behaves like the documented default).

No Kedro import: library code (e.g. :mod:`cellsynth.evaluation`) takes these objects too.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

__all__ = [
    "C2STSettings",
    "ClusteringSettings",
    "ConfigError",
    "DatasetSettings",
    "DownstreamFigureSettings",
    "DownstreamSettings",
    "EvaluationFigureSettings",
    "EvaluationSettings",
    "FairSettings",
    "GenerationSettings",
    "IntegrationScoringSettings",
    "IntegrationSettings",
    "InteractionSettings",
    "MarkerSettings",
    "PreprocessingSettings",
    "QCSettings",
    "Settings",
    "SplittingSettings",
    "TrackingSettings",
    "UtilitySettings",
    "VerdictSettings",
    "split_list",
]

S = TypeVar("S", bound="Settings")

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A dataset name: a single folder name (it is a path part of every output)."""


class ConfigError(ValueError):
    """A parameters block that does not fit its settings class (names the key and what is allowed)."""


def _is_instance(value: Any, kind: Any) -> bool:
    if kind is Any:
        return True
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _convert(value: Any, kind: Any, where: str) -> Any:
    """``value`` as the annotated ``kind`` (nested settings, ``Literal``, optional, tuples), or an error."""
    origin = get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} is none of {_describe(kind)}")
    if origin is Literal:
        if value not in get_args(kind):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(kind))}")
        return value
    if isinstance(kind, type) and issubclass(kind, Settings):
        return kind.from_params(value, where=where)
    if origin is tuple:
        value = split_list(value)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = get_args(kind)[0]
        return tuple(_convert(_as_item(v, item), item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or kind is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if not _is_instance(value, kind):
        raise ConfigError(f"{where}: expected {_describe(kind)}, got {value!r}")
    return float(value) if kind is float else value


LIST_SEPARATOR = "+"


def split_list(value: Any) -> Any:
    """A list written on the command line as one string, ``smote+class_gaussian_pca`` (or with spaces),
    as a list; any other value unchanged.

    ``kedro run --params`` splits its argument at every comma, so ``[a,b]`` cannot be passed there.
    """
    if isinstance(value, str):
        return [part for part in value.replace(LIST_SEPARATOR, " ").split() if part]
    return value


def _as_item(value: Any, kind: Any) -> Any:
    """A number typed on the command line (``folds=0+1``) is a string until here."""
    if kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _describe(kind: Any) -> str:
    if get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_describe(k) for k in get_args(kind))
    if get_origin(kind) is Literal:
        return f"one of {list(get_args(kind))}"
    if kind is type(None):
        return "null"
    return getattr(kind, "__name__", str(kind))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings block: strict parsing from a parameters mapping."""

    block: ClassVar[str] = ""

    @classmethod
    def from_params(cls: type[S], params: Mapping[str, Any] | S | None, *, where: str | None = None) -> S:
        """Parse a parameters mapping (``None``: all defaults; an instance is returned as it is)."""
        where = where or cls.block or cls.__name__
        if isinstance(params, cls):
            return params
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where}: expected a mapping of settings, got {params!r}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, field in fields.items():
            if name in params:
                values[name] = _convert(params[name], hints[name], f"{where}.{name}")
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {name!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), e.g. for the report's parameters block."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _nested(cls: type[Settings]) -> Any:
    return dataclasses.field(default_factory=cls)


# ----------------------------------------------------------------------------- parameters.yml
@dataclasses.dataclass(frozen=True)
class DatasetSettings(Settings):
    """``dataset``: the ``.h5ad`` every pipeline works on (``conf/base/globals.yml``)."""

    block: ClassVar[str] = "dataset"
    name: str
    path: str
    label_key: str | None
    batch_key: str | None = None
    counts_layer: str | None = None
    organism: Literal["human", "mouse"] | None = None  # None: detected from the gene names
    cluster_if_unlabelled: bool = False  # label_key null: cells labelled by Leiden clusters (preprocessing.clustering)

    def __post_init__(self) -> None:
        # The name is a folder of every output layer (data/<layer>/<name>/...): one plain path part.
        if not DATASET_NAME.fullmatch(self.name) or self.name in {".", ".."}:
            raise ConfigError(
                f"dataset.name={self.name!r}: use letters, digits, '.', '_' or '-' only (it names the "
                "output folders data/<layer>/<name>/ and the MLflow experiment), e.g. my_atlas."
            )


@dataclasses.dataclass(frozen=True)
class TrackingSettings(Settings):
    """``tracking``: MLflow (read by the tracking hook, never by a node)."""

    block: ClassVar[str] = "tracking"
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment_prefix: str = "cellsynth"


# ----------------------------------------------------------------------------- preprocessing
@dataclasses.dataclass(frozen=True)
class QCSettings(Settings):
    """``preprocessing.qc``: fixed thresholds and/or outliers by median absolute deviations (MAD).

    The default fits any data: a floor of 200 detected genes, then outliers beyond ``n_mads_genes`` MADs
    of the log detected genes, ``n_mads_counts`` MADs of the log library size, and above ``n_mads_mito``
    MADs of the mitochondrial %.
    The Seurat PBMC3K thresholds are ``preprocessing.qc_by_dataset`` entries of the PBMC datasets.
    """

    block: ClassVar[str] = "preprocessing.qc"
    min_cells_per_gene: int = 3
    min_genes_per_cell: int | None = 200
    max_genes_per_cell: int | None = None
    max_pct_mito: float | None = None
    n_mads_genes: float | None = 5.0
    n_mads_counts: float | None = 5.0
    n_mads_mito: float | None = 3.0
    mito_prefixes: tuple[str, ...] | None = None
    warn_removed_share: float = 0.5

    def __post_init__(self) -> None:
        # Out-of-range thresholds would silently keep or drop every cell: refuse them before the run.
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"{self.block}.{name}={getattr(self, name)!r}: must be {rule}")

        for name in ("min_cells_per_gene", "min_genes_per_cell", "max_genes_per_cell"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise bad(name, "a count >= 0 (or null)")
        for name in ("n_mads_genes", "n_mads_counts", "n_mads_mito"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise bad(name, "a number of MADs > 0 (null: no outlier step)")
        if self.max_pct_mito is not None and not 0 <= self.max_pct_mito <= 100:
            raise bad("max_pct_mito", "a percentage in [0, 100] (or null)")
        if not 0 < self.warn_removed_share <= 1:
            raise bad("warn_removed_share", "a share in (0, 1]")
        if (self.min_genes_per_cell is not None and self.max_genes_per_cell is not None
                and self.max_genes_per_cell <= self.min_genes_per_cell):
            raise bad("max_genes_per_cell", f"above min_genes_per_cell={self.min_genes_per_cell}")


@dataclasses.dataclass(frozen=True)
class ClusteringSettings(Settings):
    """``preprocessing.clustering``: Leiden clusters as labels of unlabelled data (``dataset.cluster_if_unlabelled``)."""

    block: ClassVar[str] = "preprocessing.clustering"
    resolution: float = 1.0
    n_top_genes: int = 2000
    n_pcs: int = 30
    n_neighbors: int = 15
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PreprocessingSettings(Settings):
    """``preprocessing``: QC (``qc``, with per-dataset overrides ``qc_by_dataset``), rare types, normalisation."""

    block: ClassVar[str] = "preprocessing"
    qc: QCSettings = _nested(QCSettings)
    # dataset name -> overrides of `qc` (e.g. the Seurat PBMC3K thresholds for pbmc3k); reference data kept
    # in conf/base only, like downstream.markers.expected.
    qc_by_dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    min_cells_per_type: int = 10
    target_sum: float = 10_000.0
    clustering: ClusteringSettings = _nested(ClusteringSettings)

    def __post_init__(self) -> None:
        for name in self.qc_by_dataset:
            self.qc_for(name)  # an unknown key or a bad value is an error naming the dataset

    def qc_for(self, name: str, overrides: Mapping[str, Any] | None = None) -> QCSettings:
        """``qc`` with the entry of ``qc_by_dataset`` for the dataset ``name`` and then ``overrides`` applied."""
        entry = self.qc_by_dataset.get(name) or {}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"preprocessing.qc_by_dataset.{name}: expected a mapping of qc settings, got {entry!r}")
        merged = {**dataclasses.asdict(self.qc), **entry, **dict(overrides or {})}
        where = f"preprocessing.qc_by_dataset.{name}" if entry else "preprocessing.qc"
        return QCSettings.from_params(merged, where=where)


@dataclasses.dataclass(frozen=True)
class IntegrationScoringSettings(Settings):
    block: ClassVar[str] = "integration.scoring"
    n_top_genes: int = 2000
    n_pcs: int = 30
    max_cells: int | None = 20_000
    n_neighbors: int = 15
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class IntegrationSettings(Settings):
    """``integration``: batch correction when several ``datasets`` are integrated."""

    block: ClassVar[str] = "integration"
    method: Literal["none", "combat", "linear"] = "linear"
    protect_cell_type: bool = True
    min_gene_overlap: float = 0.5
    unmapped_labels: Literal["keep", "drop"] = "keep"
    scoring: IntegrationScoringSettings = _nested(IntegrationScoringSettings)


# ----------------------------------------------------------------------------- splitting, generation
@dataclasses.dataclass(frozen=True)
class SplittingSettings(Settings):
    block: ClassVar[str] = "splitting"
    n_folds: int = 5
    seed: int = 0
    n_top_genes: int = 2000
    hvg_flavor: Literal["seurat_v3", "seurat", "cell_ranger"] = "seurat_v3"
    hvg_cells: Literal["train", "all"] = "train"


@dataclasses.dataclass(frozen=True)
class GenerationSettings(Settings):
    block: ClassVar[str] = "generation"
    generators: tuple[str, ...] = ("nb_latent_flow", "nb_latent_maf", "nb_latent_moe", "scvi", "maf", "moe", "smote",
                                   "train_copy", "gene_shuffle", "class_gaussian_pca")
    strategy: Literal["conditional", "per_type"] = "conditional"
    preset: str = "default"
    seed: int = 0
    progress: bool = True


# ----------------------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class C2STSettings(Settings):
    block: ClassVar[str] = "evaluation.c2st"
    enabled: bool = True
    classifier: Literal["hist_gb", "logistic"] = "hist_gb"
    n_splits: int = 5
    n_threads: int | None = 1
    small_set_cells: int | None = 100


@dataclasses.dataclass(frozen=True)
class UtilitySettings(Settings):
    block: ClassVar[str] = "evaluation.utility"
    n_estimators: int = 100
    n_jobs: int | None = 2


@dataclasses.dataclass(frozen=True)
class EvaluationFigureSettings(Settings):
    block: ClassVar[str] = "evaluation.figures"
    dpi: int = 110
    pca_max_cells: int = 3000
    pca_clip_quantile: float = 0.005
    umap_max_cells: int = 2000
    correlation_genes: int = 20


@dataclasses.dataclass(frozen=True)
class FairSettings(Settings):
    """``evaluation.fair``: the fair protocol (a space fitted per comparison, repeated halves)."""

    block: ClassVar[str] = "evaluation.fair"
    enabled: bool = True
    honest_repeats: int = 5
    min_detection_cells: int = 10
    within_type_min_cells: int = 10
    correlation_genes: int = 100
    correlation_min_cells: int = 20


@dataclasses.dataclass(frozen=True)
class VerdictSettings(Settings):
    """``evaluation.verdict``: the thresholds of the verdict table."""

    block: ClassVar[str] = "evaluation.verdict"
    max_detection_excess: float = 0.05
    max_within_type_excess: float = 0.1
    min_correlation_ratio: float = 0.5
    min_recall_ratio: float = 0.5
    min_memorization: float = 0.5
    min_support: int = 10
    spread_factor: float = 2.0


@dataclasses.dataclass(frozen=True)
class EvaluationSettings(Settings):
    """``evaluation``: the protocol's settings (see :mod:`cellsynth.evaluation`).

    ``seed`` seeds the PCA, the honest split, the generator subsample, the C2ST and the random
    forests; ``n_pca`` components of the reference space; a cell type is compared on its own with
    at least ``min_cells_per_type`` cells on both sides; ``knn_k`` neighbours of the k-NN
    precision/recall; the MMDs (quadratic in cells) of a set larger than ``mmd_max_cells`` use a
    seeded subsample of it (``None``: all cells). ``fair``: the fair protocol
    (:mod:`cellsynth.evaluation.fair`); ``verdict``: the verdict's thresholds
    (:mod:`cellsynth.evaluation.verdict`).
    """

    block: ClassVar[str] = "evaluation"
    seed: int = 0
    n_pca: int = 50
    min_cells_per_type: int = 20
    per_type: bool = True
    knn_k: int = 5
    mmd_max_cells: int | None = 20_000
    c2st: C2STSettings = _nested(C2STSettings)
    utility: UtilitySettings = _nested(UtilitySettings)
    figures: EvaluationFigureSettings = _nested(EvaluationFigureSettings)
    fair: FairSettings = _nested(FairSettings)
    verdict: VerdictSettings = _nested(VerdictSettings)

    def compare_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`cellsynth.metrics.compare` for these settings."""
        return {
            "seed": self.seed,
            "k": self.knn_k,
            "c2st": self.c2st.enabled,
            "classifier": self.c2st.classifier,
            "n_splits": self.c2st.n_splits,
            "n_threads": self.c2st.n_threads,
            "mmd_max_cells": self.mmd_max_cells,
            "small_set_cells": self.c2st.small_set_cells,
        }


# ----------------------------------------------------------------------------- downstream
@dataclasses.dataclass(frozen=True)
class MarkerSettings(Settings):
    block: ClassVar[str] = "downstream.markers"
    method: Literal["wilcoxon", "t-test", "t-test_overestim_var"] = "wilcoxon"
    n_top: int = 20
    rank_by: Literal["logfc", "score"] = "logfc"
    max_pval_adj: float = 0.05
    min_logfc: float = 1.0
    min_cells: int = 3
    expected: dict[str, Any] = dataclasses.field(default_factory=dict)

    def selection(self) -> dict[str, Any]:
        """Keyword arguments of :func:`cellsynth.downstream.top_markers` and the preservation."""
        return {"n_top": self.n_top, "rank_by": self.rank_by, "max_pval_adj": self.max_pval_adj,
                "min_logfc": self.min_logfc}


@dataclasses.dataclass(frozen=True)
class InteractionSettings(Settings):
    block: ClassVar[str] = "downstream.interactions"
    resource_name: str = "auto"
    expr_prop: float = 0.1
    min_cells: int = 5
    n_perms: int = 1000
    seed: int = 0
    alpha: float = 0.05
    n_jobs: int = 1
    real_plus_synthetic: Literal["upsample", "matched"] = "upsample"


@dataclasses.dataclass(frozen=True)
class DownstreamFigureSettings(Settings):
    block: ClassVar[str] = "downstream.figures"
    dpi: int = 110
    dotplot_pairs: int = 15
    dotplot_celltype_pairs: int = 12
    report_markers_per_type: int = 5


@dataclasses.dataclass(frozen=True)
class DownstreamSettings(Settings):
    """``downstream``: marker genes and cell–cell interactions (paper 2.5–2.6).

    ``folds``: ``first`` (the paper analysed its first fold), ``all``, or a list of folds of
    ``folds_to_run``.
    """

    block: ClassVar[str] = "downstream"
    folds: Literal["first", "all"] | int | tuple[int, ...] = "first"
    markers: MarkerSettings = _nested(MarkerSettings)
    interactions: InteractionSettings = _nested(InteractionSettings)
    figures: DownstreamFigureSettings = _nested(DownstreamFigureSettings)
