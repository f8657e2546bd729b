from kedro.pipeline import Pipeline

from cellsynth.run_matrix import RunMatrix


def create_pipeline(matrix: RunMatrix, **kwargs) -> Pipeline:
    """Filled by the generation issue."""
    return Pipeline([])
