from .unet_continuous import ContinuousUNet2DModel

__all__ = ["ContinuousUNet2DModel"]
