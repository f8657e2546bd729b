"""Which organism a dataset's genes come from: it picks the mitochondrial prefix and the ligand–receptor resource.

Human gene symbols (HGNC) are upper case (``INS``, ``MT-CO1``); mouse symbols (MGI) are capitalised
(``Ins1``, ``mt-Co1``); Ensembl identifiers start with ``ENSG`` (human) or ``ENSMUSG`` (mouse). A dataset's
organism is the ``dataset.organism`` setting when given, else detected from its gene names here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from cellsynth.data.validation import InputDataError

ORGANISMS = ("human", "mouse")
MITO_PREFIX = {"human": "MT-", "mouse": "mt-"}
"""Prefix of the mitochondrially encoded genes' symbols."""
LR_RESOURCE = {"human": "consensus", "mouse": "mouseconsensus"}
"""LIANA's bundled ligand–receptor resource for each organism (``mouseconsensus``: the consensus resource
converted to mouse orthologues)."""

MIN_SHARE = 0.8
"""Share of the classifiable gene names that must follow one organism's convention to decide."""

_LETTERS = re.compile(r"[A-Za-z]")


def _convention(name: str) -> str | None:
    """``human`` / ``mouse`` for a name that follows one convention, ``None`` for names that tell nothing."""
    upper = name.upper()
    if upper.startswith("ENSMUSG"):
        return "mouse"
    if upper.startswith("ENSG"):
        return "human"
    letters = _LETTERS.findall(name)
    if len(letters) < 2:  # "7SK", numbers: no case to read
        return None
    if not any(c.islower() for c in letters):
        return "human"
    if letters[0].isupper() and not any(c.isupper() for c in letters[1:]):
        return "mouse"  # Ins1, Gm12345
    if name.startswith("mt-"):
        return "mouse"
    return None  # mixed case (C1orf112, 0610007P14Rik): both organisms have such names


def detect_organism(gene_names: Iterable[str], *, source: str) -> str:
    """``human`` or ``mouse`` from the case of the gene symbols (or the Ensembl prefix).

    Raises :class:`InputDataError` naming ``dataset.organism`` when fewer than ``MIN_SHARE`` of the
    classifiable names follow one convention.
    """
    votes = [v for v in (_convention(str(n)) for n in gene_names) if v is not None]
    if votes:
        share_human = float(np.mean([v == "human" for v in votes]))
        if share_human >= MIN_SHARE:
            return "human"
        if share_human <= 1.0 - MIN_SHARE:
            return "mouse"
        detail = f"{100 * share_human:.0f}% of {len(votes)} gene names look human (upper case), the rest mouse"
    else:
        detail = "no gene name has letters to read"
    raise InputDataError(
        f"{source}: cannot tell the organism from the gene names ({detail}). Set dataset.organism to one of "
        f"{list(ORGANISMS)} (it picks the mitochondrial prefix and the ligand-receptor resource)."
    )


def resolve_organism(setting: str | None, gene_names: Iterable[str], *, source: str) -> tuple[str, bool]:
    """The organism to use and whether it was detected (``setting`` ``None``) rather than set."""
    if setting is not None:
        if setting not in ORGANISMS:
            raise InputDataError(f"{source}: dataset.organism={setting!r} is not one of {list(ORGANISMS)}")
        return setting, False
    return detect_organism(gene_names, source=source), True


def interaction_resource(resource_name: str, organism: str | None) -> str:
    """The LIANA resource to use: ``resource_name`` unless it is ``auto`` (then the organism's)."""
    if resource_name != "auto":
        return resource_name
    return LR_RESOURCE.get(organism or "human", LR_RESOURCE["human"])
