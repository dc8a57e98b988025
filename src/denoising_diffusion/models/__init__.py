from .compile import compile_unet
from .unet_continuous import ContinuousUNet2DModel

__all__ = ["ContinuousUNet2DModel", "compile_unet"]
