"""``python -m cellsynth``: runs the project like ``kedro run``, or samples from a fitted model.

``python -m cellsynth [run] [kedro run options]`` runs the project (``run`` is optional);
``python -m cellsynth sample --model ... --n ... --out ...`` samples cells (:mod:`cellsynth.sample_cli`).
"""

import sys
from pathlib import Path


def main(*args, **kwargs):
    argv = sys.argv[1:]
    if argv[:1] == ["sample"]:
        from cellsynth.sample_cli import sample_command

        return sample_command(argv[1:])
    if argv[:1] == ["run"]:
        sys.argv = [sys.argv[0], *argv[1:]]

    from kedro.framework.cli.utils import find_run_command
    from kedro.framework.project import configure_project

    package_name = Path(__file__).parent.name
    configure_project(package_name)
    kwargs["standalone_mode"] = not hasattr(sys, "ps1")
    return find_run_command(package_name)(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
