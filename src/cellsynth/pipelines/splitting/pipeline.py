from kedro.pipeline import Pipeline, node, pipeline

from cellsynth.pipelines._binding import bind
from cellsynth.pipelines.splitting.nodes import build_fold, describe_data, split_folds
from cellsynth.run_matrix import RunMatrix


def create_pipeline(matrix: RunMatrix, **kwargs) -> Pipeline:
    """``split_folds``, ``describe_data`` (cell types and their split, the report's data section), then one namespace ``fold_<k>`` per fold to run (train/test with HVGs)."""
    folds = [
        pipeline(
            [
                node(
                    bind(build_fold, fold=k),
                    ["normalised_cells", "fold_assignments", "params:splitting"],
                    ["train", "test"],
                    name="build_fold",
                )
            ],
            namespace=f"fold_{k}",
            inputs={"normalised_cells", "fold_assignments"},
            parameters={"params:splitting"},
        )
        for k in matrix.folds
    ]
    return pipeline(
        [
            node(split_folds, ["normalised_cells", "params:splitting"], "fold_assignments", name="split_folds"),
            node(
                describe_data,
                ["normalised_cells", "fold_assignments", "cell_types", "qc_summary", "qc_figure",
                 "params:preprocessing", "params:splitting", "params:dataset"],
                ["cell_type_split", "data_section"],
                name="describe_data",
            ),
        ]
    ) + sum(folds, Pipeline([]))
