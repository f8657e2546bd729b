"""Generator presets for tests, read from the project's parameter file (presets live in YAML only)."""

from __future__ import annotations

from pathlib import Path

import yaml

PARAMETERS = Path(__file__).resolve().parents[1] / "conf" / "base" / "parameters_generation.yml"


def generator_preset(name: str, preset: str) -> dict:
    """A fresh copy of ``generator_presets[name][preset]`` of ``conf/base/parameters_generation.yml``."""
    return dict(yaml.safe_load(PARAMETERS.read_text())["generator_presets"][name][preset] or {})
