from kedro.pipeline import Pipeline, node, pipeline

from cellsynth.pipelines.preprocessing.nodes import filter_cells_and_genes, log_normalise, validate_input


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(validate_input, ["raw_cells", "params:dataset"], "validated_counts", name="validate_input"),
            node(
                filter_cells_and_genes,
                ["validated_counts", "params:preprocessing", "params:splitting.n_folds", "params:dataset"],
                ["qc_cells", "qc_summary"],
                name="quality_control",
            ),
            node(log_normalise, ["qc_cells", "params:preprocessing"], "normalised_cells", name="normalise"),
        ]
    )
