"""Denoising Diffusion Implicit Models as first-class Hugging Face diffusers components."""

# diffusers' pipeline loader learns how to load a component from the base classes its library
# exposes (`ModelMixin`, `SchedulerMixin`, ...): with these names here, a `model_index.json` entry
# ["denoising_diffusion", "ContinuousUNet2DModel"] loads like one of diffusers' own.
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin

from .models.compile import compile_unet
from .models.unet_continuous import ContinuousUNet2DModel
from .pipelines.inversion import slerp
from .pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
from .schedulers.noise_schedule import signal_noise_rates
from .schedulers.scheduling_cosine_ddim import CosineDDIMScheduler
from .schedulers.scheduling_cosine_dpmsolver import CosineDPMSolverScheduler

__version__ = "0.1.0"

__all__ = [
    "ContinuousUNet2DModel", "CosineDDIMPipeline", "CosineDDIMScheduler", "CosineDPMSolverScheduler", "compile_unet",
    "signal_noise_rates", "slerp",
    "DiffusionPipeline", "ModelMixin", "SchedulerMixin",
]
