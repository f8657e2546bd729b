from cellsynth.pipelines.downstream.pipeline import create_pipeline

__all__ = ["create_pipeline"]
