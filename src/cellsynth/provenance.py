"""Which data and parameters made an output, recorded in the output and checked before it is reused.

Every AnnData the pipelines save carries a record in ``uns["cellsynth_provenance"]`` (a JSON string,
so that ``None`` values survive ``.h5ad``), built in stages as the cells move through the pipelines:

* ``dataset``: the dataset's ``name`` and its settings (``label_key``, ``batch_key``, ...), and per input
  file its path, size, modification time and **content hash** (SHA-256). Made by ``validate_input``.
* ``preprocessing``: the ``preprocessing`` block and ``splitting.n_folds`` (which sets the smallest
  type kept); with several datasets also ``integration`` (less its scoring) and ``label_mapping``.
* ``splitting``: the ``splitting`` block and the fold (``fold_<k>.train`` / ``test``).
* ``generation``: generator, ``generation.seed``, strategy, preset and the resolved hyperparameters
  (``<generator>.fold_<k>.synthetic`` / ``upsample``).

:func:`expected_record` builds the same record from a run's parameters; :func:`differences` says, in
words, where a saved record and the run's differ. The Kedro hook that refuses a run whose reused
outputs came from other data or parameters is :class:`cellsynth.provenance_hook.ProvenanceHook`.
No Kedro import here: nodes and notebooks use these functions directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anndata import AnnData

from cellsynth.config import (
    ConfigError,
    DatasetSettings,
    GenerationSettings,
    IntegrationSettings,
    PreprocessingSettings,
    SplittingSettings,
)

UNS_KEY = "cellsynth_provenance"
"""``uns`` key of the record (a JSON string)."""

FILE_KEY = "cellsynth_file"
"""``uns`` key the raw-file datasets put on what they load: that file's :func:`file_fingerprint`."""

STAGES = ("dataset", "preprocessing", "splitting", "generation")
"""The record's sections, in the order the pipelines add them."""


class ProvenanceError(ConfigError):
    """Outputs this run would reuse were made from other data or parameters (the message says what to run)."""


# ----------------------------------------------------------------------------- input files
_HASHES: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str | os.PathLike, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Path, size, modification time (ns) and SHA-256 of a file (or a folder's files, in name order).

    ``known`` is an earlier fingerprint: when the file still has its size and modification time, its
    hash is taken from there instead of reading the file again (the test ``make`` and ``rsync`` use).
    A missing file has ``sha256: None``.
    """
    target = Path(path)
    record: dict[str, Any] = {"path": str(path), "bytes": None, "mtime_ns": None, "sha256": None}
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    if not target.exists():
        return record
    stats = [f.stat() for f in files]
    size, mtime = sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    record.update(bytes=int(size), mtime_ns=int(mtime))
    if known and known.get("sha256") and known.get("bytes") == size and known.get("mtime_ns") == mtime:
        record["sha256"] = known["sha256"]
        return record
    key = (str(target.resolve()), size, mtime)
    if key not in _HASHES:
        digest = hashlib.sha256()
        for file in files:
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _HASHES[key] = digest.hexdigest()
    record["sha256"] = _HASHES[key]
    return record


# ----------------------------------------------------------------------------- sections
def _plain(value: Any) -> Any:
    """JSON-shaped copy (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, default=str))


def dataset_section(
    dataset: Mapping[str, Any] | DatasetSettings,
    datasets: list[Mapping[str, Any]] | None,
    files: Mapping[str, Mapping[str, Any] | None],
) -> dict[str, Any]:
    """``{"name", <dataset settings>, "inputs": {input: {file fingerprint, its settings}}}``.

    ``files`` maps each input's name (``dataset.name``, or each ``datasets[*].name``) to its
    :func:`file_fingerprint` (``None`` when unknown).
    """
    settings = DatasetSettings.from_params(dataset)
    section: dict[str, Any] = {"name": settings.name}
    inputs: dict[str, Any] = {}
    if datasets:
        from cellsynth.data.integration import parse_dataset_specs

        for spec in parse_dataset_specs(datasets):
            entry = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("name", "path")}
            inputs[spec.name] = {**_file_part(files.get(spec.name), spec.path), **entry}
    else:
        section.update({k: v for k, v in settings.to_dict().items() if k not in ("name", "path")})
        inputs[settings.name] = _file_part(files.get(settings.name), settings.path)
    section["inputs"] = inputs
    return _plain(section)


def _file_part(fingerprint: Mapping[str, Any] | None, path: str) -> dict[str, Any]:
    fingerprint = dict(fingerprint or {})
    return {"path": str(path), "bytes": fingerprint.get("bytes"),
            "mtime_ns": fingerprint.get("mtime_ns"), "sha256": fingerprint.get("sha256")}


def preprocessing_section(
    preprocessing: Mapping[str, Any] | None,
    splitting: Mapping[str, Any] | None,
    integration: Mapping[str, Any] | None = None,
    label_mapping: Mapping[str, Any] | None = None,
    *,
    several: bool = False,
) -> dict[str, Any]:
    """The parameters that shape the QC'd, normalised cells (``several``: integrated datasets)."""
    section = {**PreprocessingSettings.from_params(preprocessing).to_dict(),
               "n_folds": SplittingSettings.from_params(splitting).n_folds}
    if several:
        corrected = IntegrationSettings.from_params(integration).to_dict()
        corrected.pop("scoring", None)  # scores only: they do not change the cells
        section["integration"] = corrected
        section["label_mapping"] = dict(label_mapping or {})
    return _plain(section)


def splitting_section(splitting: Mapping[str, Any] | None, fold: int) -> dict[str, Any]:
    return _plain({**SplittingSettings.from_params(splitting).to_dict(), "fold": int(fold)})


def generation_section(
    generation: Mapping[str, Any] | None, presets: Mapping[str, Any] | None, generator: str
) -> dict[str, Any]:
    """Generator, ``generation.seed`` (the fold's fit seed is ``seed + fold``), strategy, preset, hyperparameters."""
    settings = GenerationSettings.from_params(generation)
    choices = dict((presets or {}).get(generator) or {})
    hyperparameters = choices.get(settings.preset, choices.get("default")) or {}
    return _plain({"generator": generator, "seed": settings.seed, "strategy": settings.strategy,
                   "preset": settings.preset, "hyperparameters": dict(hyperparameters)})


# ----------------------------------------------------------------------------- records in AnnData
def record_of(adata: AnnData) -> dict[str, Any] | None:
    """The record of ``adata`` (``None`` when it has none)."""
    raw = adata.uns.get(UNS_KEY)
    return json.loads(raw) if isinstance(raw, str) else None


def with_sections(record: Mapping[str, Any] | None, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with ``sections`` added or replaced (a new dict)."""
    return {**(record or {}), **{name: dict(value) for name, value in sections.items()}}


def stamp(adata: AnnData, record: Mapping[str, Any]) -> None:
    """Write ``record`` into ``adata.uns`` (``adata`` must be a node's own output, never its input)."""
    adata.uns[UNS_KEY] = json.dumps(record, sort_keys=True)


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a saved ``.h5ad`` without loading its matrices, or of a record's ``.json`` file
    (``None`` when it has none)."""
    if Path(path).suffix == ".json":
        return json.loads(Path(path).read_text(encoding="utf-8"))
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as handle:
        uns = handle.get("uns")
        if uns is None or UNS_KEY not in uns:
            return None
        raw = read_elem(uns[UNS_KEY])
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


def dataset_name(adata: AnnData, dataset: Mapping[str, Any] | DatasetSettings) -> str:
    """The name of the dataset ``adata``'s cells came from (its record; the parameters when it has none)."""
    record = record_of(adata) or {}
    return str((record.get("dataset") or {}).get("name") or DatasetSettings.from_params(dataset).name)


def describe(record: Mapping[str, Any] | None) -> str:
    """``name (path, sha256 1a2b3c4d5e6f)`` of a record's dataset, for reports and logs."""
    section = (record or {}).get("dataset") or {}
    inputs = section.get("inputs") or {}
    files = ", ".join(f"{v.get('path')} sha256 {str(v.get('sha256') or 'unknown')[:12]}" for v in inputs.values())
    return f"{section.get('name', 'unknown')} ({files})" if files else str(section.get("name", "unknown"))


# ----------------------------------------------------------------------------- expected vs found
def expected_record(
    params: Mapping[str, Any],
    sections: tuple[str, ...],
    *,
    fold: int | None = None,
    generator: str | None = None,
    project_path: Path | None = None,
    known_files: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The record a run with ``params`` would write into an output that has ``sections``.

    Input files are fingerprinted (relative paths from ``project_path``); ``known_files`` (an
    output's own ``dataset.inputs``) saves re-reading a file whose size and time are unchanged.
    """
    datasets = list(params.get("datasets") or [])
    record: dict[str, Any] = {}
    if "dataset" in sections:
        paths = ({str(d["name"]): str(d["path"]) for d in datasets if isinstance(d, Mapping) and "name" in d}
                 if datasets else {str(params["dataset"]["name"]): str(params["dataset"]["path"])})
        files = {}
        for name, path in paths.items():
            full = Path(path) if Path(path).is_absolute() or project_path is None else project_path / path
            fingerprint = file_fingerprint(full, (known_files or {}).get(name))
            files[name] = {**fingerprint, "path": path}
        record["dataset"] = dataset_section(params["dataset"], datasets, files)
    if "preprocessing" in sections:
        record["preprocessing"] = preprocessing_section(
            params.get("preprocessing"), params.get("splitting"), params.get("integration"),
            params.get("label_mapping"), several=bool(datasets))
    if "splitting" in sections:
        record["splitting"] = splitting_section(params.get("splitting"), int(fold or 0))
    if "generation" in sections:
        record["generation"] = generation_section(params.get("generation"), params.get("generator_presets"),
                                                  str(generator))
    return record


IGNORED = ("bytes", "mtime_ns")
"""Fingerprint fields that are not identity (a copied or touched file keeps its content hash)."""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _file_text(entry: Mapping[str, Any]) -> str:
    return f"{entry.get('path')} (sha256 {str(entry.get('sha256') or 'unknown')[:12]})"


def _setting_defaults() -> dict[str, Any]:
    """Record keys of the settings blocks with their default values."""
    return _flat({"preprocessing": PreprocessingSettings().to_dict(), "splitting": SplittingSettings().to_dict()})


def differences(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, this run's value)`` for every setting where the two records differ.

    An input file is one row, ``dataset.inputs.<name>``, when its content hash (or, a hash unknown,
    its path) differs: ``path (sha256 …)`` on each side. A setting the saved record lacks is no
    difference when this run keeps its default: the file was made before the setting existed, and the
    default is what cellsynth did then (e.g. ``splitting.hvg_cells: train``).
    """
    found_inputs = dict((found.get("dataset") or {}).get("inputs") or {})
    expected_inputs = dict((expected.get("dataset") or {}).get("inputs") or {})
    rows = []
    for name in sorted(set(found_inputs) | set(expected_inputs)):
        a, b = dict(found_inputs.get(name) or {}), dict(expected_inputs.get(name) or {})
        same = a.get("sha256") == b.get("sha256") if a.get("sha256") and b.get("sha256") else a.get("path") == b.get("path")
        if not (a and b and same):
            rows.append((f"dataset.inputs.{name}", _file_text(a) if a else "<absent>", _file_text(b) if b else "<absent>"))
    flat_a, flat_b = _flat(found), _flat(expected)
    defaults = _setting_defaults()
    for key in sorted(set(flat_a) | set(flat_b)):
        if key.startswith("dataset.inputs.") and key.rsplit(".", 1)[-1] in ("path", "sha256", *IGNORED):
            continue  # compared above, one row per file
        if key not in flat_a and key in defaults and flat_b.get(key) == defaults[key]:
            continue  # a setting newer than the file, at its default
        if flat_a.get(key, "<absent>") != flat_b.get(key, "<absent>"):
            rows.append((key, flat_a.get(key, "<absent>"), flat_b.get(key, "<absent>")))
    return rows


def parameter_of(key: str) -> str | None:
    """The ``--params`` key that sets a record key (``None``: not a parameter, e.g. a file's content)."""
    if key.startswith(("dataset.inputs.", "splitting.fold", "generation.generator", "generation.hyperparameters")):
        return None
    if key == "preprocessing.n_folds":
        return "splitting.n_folds"
    if key.startswith(("preprocessing.integration.", "preprocessing.label_mapping")):
        return key.removeprefix("preprocessing.")
    return key


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value))
    return "null" if value is None else str(value)[:100]


MAX_LISTED = 4
"""Outputs listed one by one in a refusal (a paper run reuses dozens; they differ alike)."""


def explain(problems: list[tuple[str, str, list[tuple[str, Any, Any]]]], *, maker: str, params_option: str,
            only_missing: bool, several: bool = False) -> str:
    """The refusal message: per output, what differs; then the ways out.

    ``problems``: ``(catalog name, file path, differences)``; ``maker`` the pipeline that remakes them
    all (with its upstream nodes); ``params_option`` this run's ``--params``.
    """
    lines = ["outputs this run would reuse were made from other data or parameters than this run's:"]
    reuse: dict[str, Any] = {}
    fixed: list[str] = []
    for i, (name, path, diffs) in enumerate(problems):
        shown = i < MAX_LISTED
        if shown:
            lines.append(f"  {name} ({path}):")
        elif i == MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more outputs")
        for key, saved, now in diffs[:8]:
            if shown:
                lines.append(f"    {key}: {_shown(saved)} in the file, {_shown(now)} in this run")
            parameter = parameter_of(key)
            if parameter is not None:
                reuse[parameter] = saved
            elif key.startswith("dataset.inputs.") and not several and isinstance(saved, str) and isinstance(now, str) \
                    and saved.split(" (")[0] != now.split(" (")[0]:
                reuse["dataset.path"] = saved.split(" (")[0]
            elif key not in fixed:
                fixed.append(key)
        if shown and len(diffs) > 8:
            lines.append(f"    ... and {len(diffs) - 8} more")
    extra = f' --params "{params_option}"' if params_option else ""
    lines.append(f"Remake them with this run's settings: kedro run --pipelines {maker}{extra}"
                 + (" (without --only-missing-outputs, which keeps what exists)" if only_missing else "")
                 + ", then run this again.")
    if reuse and not fixed:
        given = ",".join(f"{k}={_shown(v)}" for k, v in reuse.items())
        lines.append(f'Or reuse them: run with the settings they were made with, --params "{given}" '
                     "(or put them in conf/local).")
    elif fixed:
        lines.append(f"({', '.join(fixed)} changed since they were made: only remaking them helps.)")
    if any(key.startswith("dataset.") for _, _, diffs in problems for key, _, _ in diffs):
        lines.append("Or keep both: give this data its own dataset.name (its outputs then go to data/<layer>/<name>/).")
    return "\n".join(lines)
