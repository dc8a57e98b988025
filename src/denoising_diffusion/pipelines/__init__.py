from .pipeline_cosine_ddim import CosineDDIMPipeline, slerp

__all__ = ["CosineDDIMPipeline", "slerp"]
