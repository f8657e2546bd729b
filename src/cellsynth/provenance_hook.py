"""Before the first node: every saved AnnData this run would reuse must come from this run's data and parameters.

A run reuses its pipeline's free inputs (``kedro run --pipelines evaluation`` reads the folds and the
generators' cells), and with ``--only-missing-outputs`` every output that exists. Each such ``.h5ad``
carries a provenance record (:mod:`cellsynth.provenance`); :class:`ProvenanceHook` compares it with
the record this run's parameters would write and stops the run, before MLflow opens a run or any
node starts, with what differs and the command that remakes the outputs (or the ``--params`` that
reuses them). A free input that does not exist stops the run the same way, naming the pipeline that
makes it and the datasets that do have outputs. Files without a record (made by hand or by an older
cellsynth) are reported in the log and not checked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from cellsynth import provenance
from cellsynth.datasets import AnnDataDataset, ProvenanceDataset
from cellsynth.summary import params_option

log = logging.getLogger(__name__)

NAMESPACE = re.compile(r"^(?:(?P<generator>[^.]+)\.)?fold_(?P<fold>\d+)\.")
"""``fold_<k>.train`` or ``<generator>.fold_<k>.synthetic``: the fold and generator a catalog name is for."""

PIPELINES = ("preprocessing", "splitting", "generation")
"""The pipelines that write AnnData, each registered with the ones before it."""


def _maker(name: str) -> str:
    """The pipeline that writes the catalog entry ``name``."""
    match = NAMESPACE.match(name)
    if match is None:
        return "preprocessing"
    return "generation" if match["generator"] else "splitting"


def _recorded_files(names: Iterable[str], catalog) -> dict[str, Path]:
    """Catalog name → file of every output among ``names`` that carries a record (AnnData outputs, the
    provenance JSON; the user's raw files left out)."""
    files = {}
    for name in sorted(names):
        if name.startswith("params:") or name == "parameters":
            continue
        try:
            dataset = catalog.get(name)
        except Exception:  # noqa: BLE001 - a name no catalog entry or pattern matches: Kedro reports it
            continue
        if isinstance(dataset, ProvenanceDataset) or (
                isinstance(dataset, AnnDataDataset) and not getattr(dataset, "_fingerprint", False)):
            files[name] = Path(str(dataset._describe()["filepath"]))
    return files


def datasets_with_outputs(project_path: Path) -> list[str]:
    """Names of the datasets that have fold files (``data/05_model_input/<name>/``)."""
    folder = project_path / "data" / "05_model_input"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def check_reused_outputs(
    files: Mapping[str, Path],
    params: Mapping[str, Any],
    *,
    project_path: Path,
    params_text: str = "",
    only_missing: bool = False,
    must_exist: bool = True,
) -> None:
    """Raise :class:`~cellsynth.provenance.ProvenanceError` when a file in ``files`` was made from other
    data or parameters than ``params`` (or, with ``must_exist``, does not exist)."""
    name = str((params.get("dataset") or {}).get("name"))
    extra = f' --params "{params_text}"' if params_text else ""
    # The provenance JSON may be absent (folds made by hand): the report then says so.
    missing = {k: p for k, p in files.items() if not p.is_file() and p.suffix == ".h5ad"}
    if missing and must_exist:
        first = sorted(missing, key=lambda k: PIPELINES.index(_maker(k)))[0]
        others = [d for d in datasets_with_outputs(project_path) if d != name]
        raise provenance.ProvenanceError(
            f"this run reads {first} ({missing[first]}), which no run has made for the dataset {name!r} yet. "
            f"Run `kedro run --pipelines {_maker(first)}{extra}` first"
            + (f"; outputs exist for the dataset(s) {others}: pass --params dataset.name=<name> and the same "
               "dataset settings to use one of them." if others else ".")
        )
    problems = []
    for key, path in files.items():
        if not path.is_file():
            continue
        record = provenance.read_record(path)
        if record is None:
            log.warning("%s (%s) has no provenance record (made outside the pipelines?): not checked", key, path)
            continue
        match = NAMESPACE.match(key)
        fold = int(match["fold"]) if match else (record.get("splitting") or {}).get("fold")
        generator = (match["generator"] if match and match["generator"] else
                     (record.get("generation") or {}).get("generator"))
        expected = provenance.expected_record(
            params, tuple(s for s in provenance.STAGES if s in record), fold=fold, generator=generator,
            project_path=project_path, known_files=(record.get("dataset") or {}).get("inputs"))
        diffs = provenance.differences(record, expected)
        if diffs:
            problems.append((key, str(path), diffs))
    if problems:
        # `splitting` and `generation` run with their upstream nodes: the latest maker remakes them all.
        maker = max((_maker(key) for key, _, _ in problems), key=PIPELINES.index)
        raise provenance.ProvenanceError(provenance.explain(
            problems, maker=maker, params_option=params_text, only_missing=only_missing,
            several=bool(params.get("datasets"))))


class ProvenanceHook:
    """Refuses a run whose reused outputs came from other data or parameters (see the module)."""

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}
        self._project_path: Path | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._params = dict(context.params)
        self._project_path = Path(context.project_path)

    @hook_impl(tryfirst=True)  # before MLflow opens a run and before any node
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        only_missing = bool(run_params.get("only_missing_outputs"))
        # --only-missing-outputs keeps every output that exists: each one is reused, so each is checked.
        names = pipeline.datasets() if only_missing else pipeline.inputs()
        check_reused_outputs(
            _recorded_files(names, catalog), self._params,
            project_path=self._project_path or Path(run_params.get("project_path") or "."),
            params_text=params_option(run_params.get("runtime_params")),
            only_missing=only_missing, must_exist=not only_missing,
        )
