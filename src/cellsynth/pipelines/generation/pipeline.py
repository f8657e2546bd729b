from kedro.pipeline import Pipeline, node, pipeline

from cellsynth.pipelines._binding import bind
from cellsynth.pipelines.generation.nodes import generate_cells
from cellsynth.run_matrix import RunMatrix


def create_pipeline(matrix: RunMatrix, **kwargs) -> Pipeline:
    """One namespace ``<generator>.fold_<k>`` per generator × fold to run.

    Each writes ``<generator>.fold_<k>.{model,training_history,synthetic,upsample}`` and can run alone:
    ``kedro run --pipeline generation --namespaces maf.fold_0``.
    """
    groups = [
        pipeline(
            [
                node(
                    bind(generate_cells, generator=name, fold=k),
                    ["train", "test", "params:generation", "params:generator_presets"],
                    ["model", "training_history", "synthetic", "upsample"],
                    name="generate_cells",
                )
            ],
            namespace=f"{name}.fold_{k}",
            inputs={"train": f"fold_{k}.train", "test": f"fold_{k}.test"},
            parameters={"params:generation", "params:generator_presets"},
        )
        for name in matrix.generators
        for k in matrix.folds
    ]
    return sum(groups, Pipeline([]))
