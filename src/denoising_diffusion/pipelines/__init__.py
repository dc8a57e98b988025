from .inversion import slerp
from .pipeline_cosine_ddim import CosineDDIMPipeline

__all__ = ["CosineDDIMPipeline", "slerp"]
