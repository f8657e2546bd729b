"""Project pipelines.

``generation`` is registered with its upstream nodes (preprocessing, splitting) so that
``kedro run --pipelines generation`` works on a fresh clone; ``evaluation`` and ``downstream`` read
what generation saved (run ``generation`` first, or the default pipeline, which runs everything),
and both end with the ``report`` node, so ``report.html`` holds every section computed so far,
whichever order they ran in.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from cellsynth import run_matrix
from cellsynth.pipelines import downstream, evaluation, generation, preprocessing, report, splitting


def register_pipelines() -> dict[str, Pipeline]:
    matrix = run_matrix.current()
    prep = preprocessing.create_pipeline()
    split = splitting.create_pipeline(matrix)
    gen = generation.create_pipeline(matrix)
    evaluate = evaluation.create_pipeline(matrix)
    down = downstream.create_pipeline(matrix)
    assemble = report.create_pipeline()
    return {
        "preprocessing": prep,
        "splitting": prep + split,
        "generation": prep + split + gen,
        "evaluation": evaluate + assemble,
        "downstream": down + assemble,
        "report": assemble,
        "__default__": prep + split + gen + evaluate + down + assemble,
    }
