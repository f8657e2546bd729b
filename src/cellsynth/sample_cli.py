"""``python -m cellsynth sample``: synthetic cells from a fitted generator, without Kedro (not ``cli.py``:
Kedro reads a project's ``cli.py`` as its command group).

``python -m cellsynth sample --model data/06_models/pbmc3k/maf/fold_0 --n 1000 --cell-types B=200,NK=800
--seed 0 --out cells.h5ad`` loads the checkpoint folder with :meth:`Generator.load`, samples and
writes an ``.h5ad``. Mistakes (no checkpoint in the folder, a type the model never saw, counts that
do not add up to ``--n``) end with one line on stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cellsynth.generators.base import Generator, GeneratorError


class CliError(Exception):
    """A mistake in the command line, reported as one line on stderr."""


def parse_cell_types(text: str) -> dict[str, int]:
    """``"B=200,NK=300"`` → ``{"B": 200, "NK": 300}``.

    The type name is everything before the last ``=`` (names such as ``CD14+ Mono`` contain spaces
    and ``+``); counts must be non-negative integers and a type may appear once.
    """
    counts: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, count = item.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(f"--cell-types: {item!r} is not TYPE=COUNT (e.g. 'B=200,NK=300')")
        try:
            value = int(count)
        except ValueError:
            raise CliError(f"--cell-types: the count of {name!r} is {count.strip()!r}, not an integer") from None
        if value < 0:
            raise CliError(f"--cell-types: the count of {name!r} is negative ({value})")
        if name in counts:
            raise CliError(f"--cell-types: {name!r} is given twice")
        counts[name] = value
    if not counts:
        raise CliError("--cell-types: no TYPE=COUNT pair given")
    return counts


def sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cellsynth sample",
        description=(
            "Sample synthetic cells from a generator fitted by `kedro run --pipelines generation` "
            "(a checkpoint folder holding generator.json) and write them as .h5ad: X holds "
            "log-normalised expression of the training HVGs, obs the cell type, 'synthetic', "
            "'generator' and 'label_source'."
        ),
        epilog="example: python -m cellsynth sample --model data/06_models/pbmc3k/maf/fold_0 --n 500 "
        "--cell-types 'B=200,NK=300' --out cells.h5ad",
    )
    parser.add_argument("--model", required=True, type=Path, help="checkpoint folder, e.g. data/06_models/pbmc3k/maf/fold_0")
    parser.add_argument("--n", required=True, type=int, help="number of cells to sample")
    parser.add_argument(
        "--cell-types",
        default=None,
        help="cells per type, TYPE=COUNT separated by commas, summing to --n (quote names with spaces: "
        "'CD14+ Mono=100,B=400'); default: types drawn in training proportions",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="output .h5ad file (its folder is created)")
    return parser


def sample_command(argv: Sequence[str]) -> int:
    """Run ``sample`` with ``argv`` (the arguments after ``sample``); return the exit status."""
    args = sample_parser().parse_args(list(argv))
    try:
        if args.n < 0:
            raise CliError(f"--n must be >= 0, got {args.n}")
        if not (args.model / "generator.json").is_file():
            hint = (
                "the folder does not exist"
                if not args.model.exists()
                else "it holds no generator.json (a folder written by the generation pipeline does)"
            )
            raise CliError(f"--model {args.model}: no fitted generator there: {hint}")
        if args.out.suffix != ".h5ad":
            raise CliError(f"--out {args.out}: the file name must end in .h5ad")
        cell_types = parse_cell_types(args.cell_types) if args.cell_types is not None else None
        model = Generator.load(args.model)
        if cell_types is not None:
            unknown = [t for t in cell_types if t not in model.cell_types_]
            if unknown:
                raise CliError(f"--cell-types: {unknown} not among the model's types {model.cell_types_}")
            if sum(cell_types.values()) != args.n:
                raise CliError(
                    f"--cell-types: the counts sum to {sum(cell_types.values())}, not --n {args.n}"
                )
        cells = model.sample(args.n, cell_types=cell_types, seed=args.seed)
    except (CliError, GeneratorError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cells.write_h5ad(args.out)
    counts = cells.obs[model.label_key].value_counts().sort_index()
    summary = ", ".join(f"{name}={count}" for name, count in counts.items() if count)
    print(f"wrote {cells.n_obs} cells × {cells.n_vars} genes from {model.name} to {args.out} ({summary})")
    if not model.conditional and cell_types is not None:
        print(f"note: {model.name} is unconditional: types are k-NN labels, not the requested counts")
    return 0
