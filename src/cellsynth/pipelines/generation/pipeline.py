from kedro.pipeline import Pipeline, node, pipeline

from cellsynth.pipelines._binding import bind
from cellsynth.pipelines.generation.nodes import generate_cells, plan_generation
from cellsynth.run_matrix import RunMatrix


def create_pipeline(matrix: RunMatrix, **kwargs) -> Pipeline:
    """``fold_<k>.plan_generation`` (cells per type of each mode), then one namespace per generator × fold.

    Each ``<generator>.fold_<k>`` writes ``{model,training_history,synthetic,upsample,generation_run}``
    and can run alone: ``kedro run --pipeline generation --namespaces maf.fold_0``. Only the plan
    reads the test cells (their number); no generator sees them.
    """
    plans = [
        pipeline(
            [node(bind(plan_generation, fold=k), ["train", "test", "params:generation"], "generation_plan",
                  name="plan_generation")],
            namespace=f"fold_{k}",
            parameters={"params:generation"},
        )
        for k in matrix.folds
    ]
    generators = [
        pipeline(
            [
                node(
                    bind(generate_cells, generator=name, fold=k),
                    ["train", "generation_plan", "params:generation", "params:generator_presets"],
                    ["model", "training_history", "synthetic", "upsample", "generation_run"],
                    name="generate_cells",
                )
            ],
            namespace=f"{name}.fold_{k}",
            inputs={"train": f"fold_{k}.train", "generation_plan": f"fold_{k}.generation_plan"},
            parameters={"params:generation", "params:generator_presets"},
        )
        for name in matrix.generators
        for k in matrix.folds
    ]
    return sum(plans + generators, Pipeline([]))
