from kedro.pipeline import Pipeline, node, pipeline

from cellsynth.pipelines.report.nodes import build_report


def create_pipeline(**kwargs) -> Pipeline:
    """``build_report``: ``report.html`` from every report section.

    Registered at the end of ``evaluation``, ``downstream`` and the default pipeline, so the report
    holds every section whichever order the pipelines ran in; a section no pipeline has computed
    (or computed for another dataset) says so in the report.
    """
    return pipeline(
        [node(build_report, ["data_section", "evaluation_section", "integration_section", "downstream_section",
                             "dataset_provenance", "parameters"],
              "report", name="build_report")]
    )
