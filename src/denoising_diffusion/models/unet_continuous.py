"""A diffusers `UNet2DModel` conditioned on a continuous diffusion time t in [0, 1].

As in the Keras DDIM example and its R port, the network sees the *noise variance*
``sigma_t**2`` of its input through a sinusoidal embedding with log-spaced frequencies
(1 to 1000 by default):

    e(sigma^2) = [sin(2 pi f_k sigma^2), cos(2 pi f_k sigma^2)],  f_k log-spaced in [f_min, f_max]

That embedding replaces `UNet2DModel`'s integer-timestep projection; everything else (residual
blocks, the time-embedding MLP that feeds every block, attention, class embeddings) is diffusers'
own. The output convolution starts at zero, so an untrained model predicts zeros (as in the Keras
DDIM example).

With `self_conditioning=True` (Chen et al. 2022, "Analog Bits") the network also takes its own
previous estimate of the clean image, concatenated to its input as `in_channels` more channels
(`self_condition`; zeros when there is none).

With `patch_size=p > 1` the UNet works on patches, as diffusion transformers and U-ViT do: the input's
p x p pixel blocks become channels (`pixel_unshuffle`, (B, C, H, W) -> (B, C p^2, H/p, W/p)) before the
input convolution, and the output's channels become pixels again (`pixel_shuffle`) after the output
convolution. Every level then runs at 1/p the resolution, so for the same compute the levels can be
much wider; `sample_size`, `in_channels` and `out_channels` still describe the images.

With `position_channels=True` the network also reads where each pixel lies in the whole image: two more
input channels hold its column and row, scaled so that a `sample_size` image spans [-1, 1] (Patch
Diffusion, Wang et al. 2023). Training on random crops then tells the network which part of the image a
crop is (`positions`, the crop's slice of the whole image's grid); sampling whole images uses the whole
grid, which is what `positions=None` gives.

This module travels with saved pipelines, so it imports only torch, diffusers and its sibling
``noise_schedule``.
"""

import math

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import FrozenDict, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn
from torch.nn import functional as F

from ..schedulers.noise_schedule import check_times, signal_noise_rates, validate_schedule

# `UNet2DModel` options about integer timesteps that this model fixes (its time input is continuous).
_FIXED_PARENT_OPTIONS = ("freq_shift", "flip_sin_to_cos", "num_train_timesteps")


def pixel_positions(sample_size: int | tuple[int, int] | None, height: int, width: int, device=None,
                    dtype=torch.float32) -> torch.Tensor:
    """The (2, height, width) positions of an image's pixels, column then row: pixel k of a side of
    `sample_size` pixels sits at 2 k / (sample_size - 1) - 1, so a `sample_size` image spans [-1, 1]."""
    if sample_size is None:  # a model without a nominal size: the sample itself is the whole image
        sample_size = (height, width)
    rows_size, cols_size = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    cols = torch.arange(width, device=device, dtype=torch.float32) * (2.0 / max(cols_size - 1, 1)) - 1.0
    rows = torch.arange(height, device=device, dtype=torch.float32) * (2.0 / max(rows_size - 1, 1)) - 1.0
    return torch.stack([cols[None, :].expand(height, width), rows[:, None].expand(height, width)]).to(dtype)


class SinusoidalNoiseVarianceEmbedding(nn.Module):
    """Maps continuous times t, shape (B,), to sinusoidal embeddings of sigma_t**2, shape (B, dim), in float32.

    The frequencies are computed in float32 at every call rather than kept in a buffer: a model
    loaded or cast to float16 would otherwise round the highest (2 pi * 1000 ~ 6283) to a step of 4,
    and the embedding of every noise level with it.
    """

    def __init__(self, dim: int, schedule: str, min_signal_rate: float, max_signal_rate: float,
                 min_frequency: float = 1.0, max_frequency: float = 1000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"The noise embedding dimension must be even, got {dim}.")
        self.schedule, self.min_signal_rate, self.max_signal_rate = schedule, min_signal_rate, max_signal_rate
        self.dim, self.min_frequency, self.max_frequency = dim, min_frequency, max_frequency

    def angular_speeds(self, device=None) -> torch.Tensor:
        """2 pi f_k for the dim / 2 log-spaced frequencies f_k, float32."""
        log_f = torch.linspace(math.log(self.min_frequency), math.log(self.max_frequency), self.dim // 2,
                               device=device, dtype=torch.float32)
        return 2.0 * math.pi * torch.exp(log_f)

    def noise_variance(self, t: torch.Tensor) -> torch.Tensor:
        _, noise_rate = signal_noise_rates(t.float(), self.schedule, self.min_signal_rate, self.max_signal_rate)
        return noise_rate**2

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = self.noise_variance(t)[:, None] * self.angular_speeds(t.device)[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class ContinuousUNet2DModel(UNet2DModel):
    """`UNet2DModel` whose `timestep` is a continuous diffusion time t in [0, 1].

    Takes `UNet2DModel`'s arguments (defaults: the Keras DDIM example's 64x64 RGB model, widths 32/64/96/128
    with 2 residual blocks per level and no attention) plus the noise schedule the times refer
    to, which must match the scheduler's, and the embedding's frequency range.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"),
        mid_block_type: str | None = None,
        up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (32, 64, 96, 128),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 8,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        schedule: str = "cosine",
        min_signal_rate: float = 0.02,
        max_signal_rate: float = 0.95,
        embedding_min_frequency: float = 1.0,
        embedding_max_frequency: float = 1000.0,
        self_conditioning: bool = False,
        patch_size: int = 1,
        position_channels: bool = False,
    ):
        validate_schedule(schedule, min_signal_rate, max_signal_rate)
        if time_embedding_type != "positional":
            raise ValueError(
                f"time_embedding_type must be 'positional' (the sinusoidal noise-variance embedding), "
                f"got {time_embedding_type!r}."
            )
        for width in block_out_channels:
            if width % norm_num_groups:
                raise ValueError(
                    f"Every block_out_channels value must be divisible by norm_num_groups={norm_num_groups}, "
                    f"got block_out_channels={tuple(block_out_channels)}."
                )
        if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer (1: no patches), got {patch_size!r}.")
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            center_input_sample=center_input_sample, time_embedding_type="positional",
            time_embedding_dim=time_embedding_dim, down_block_types=down_block_types,
            mid_block_type=mid_block_type, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            mid_block_scale_factor=mid_block_scale_factor, downsample_padding=downsample_padding,
            downsample_type=downsample_type, upsample_type=upsample_type, dropout=dropout, act_fn=act_fn,
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
            attn_norm_num_groups=attn_norm_num_groups, norm_eps=norm_eps,
            resnet_time_scale_shift=resnet_time_scale_shift, add_attention=add_attention,
            class_embed_type=class_embed_type, num_class_embeds=num_class_embeds,
        )
        # UNet2DModel registered its integer-timestep options too; they are fixed here, so drop them.
        self._internal_dict = FrozenDict(
            {k: v for k, v in self._internal_dict.items() if k not in _FIXED_PARENT_OPTIONS and k != "_use_default_values"}
        )
        # Replace the integer-step projection with the Keras DDIM example's embedding of the noise variance.
        self.time_proj = SinusoidalNoiseVarianceEmbedding(
            block_out_channels[0], schedule, min_signal_rate, max_signal_rate,
            embedding_min_frequency, embedding_max_frequency,
        )
        # conv_in reads every pixel of a patch (and the previous estimate, the positions); conv_out writes them.
        inputs = ((2 if self_conditioning else 1) * in_channels + (2 if position_channels else 0)) * patch_size**2
        if inputs != in_channels:
            self.conv_in = nn.Conv2d(inputs, block_out_channels[0], kernel_size=3, padding=(1, 1))
        if patch_size > 1:
            self.conv_out = nn.Conv2d(block_out_channels[0], out_channels * patch_size**2, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsample_factor(self) -> int:
        """How many times smaller the lowest resolution is than the input (inputs must be divisible by it):
        the patch size times 2 per downsampling level."""
        return self.config.patch_size * 2 ** (len(self.config.block_out_channels) - 1)

    def position_grid(self, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The (2, height, width) grid of pixel positions that a whole image gets (see `pixel_positions`)."""
        return pixel_positions(self.config.sample_size, height, width, device, dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        self_condition: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> UNet2DOutput | tuple:
        """Predict from a noisy `sample` (B, C, H, W) at continuous time `timestep` in [0, 1].

        `self_condition` (B, C, H, W): for a model with `self_conditioning`, its previous estimate of the
        clean image in model space (None: zeros, as for the first sampling step); refused otherwise.

        `positions` (B, 2, H, W): for a model with `position_channels`, where each pixel of `sample` lies in
        the whole image (column, row; see `position_grid`), e.g. a training crop's slice of the whole
        grid; None gives every sample the whole image's grid. Refused for a model without them.

        `timestep` is a float, a 0-d floating-point tensor or one of shape (B,), with values in [0, 1];
        integer timesteps (diffusers' discrete schedulers) are rejected with an error, as are values
        outside [0, 1] (checked for Python numbers and CPU tensors, not inside `torch.compile`). Returns
        `UNet2DOutput` with `sample` of shape (B, out_channels, H, W) (what it means is the scheduler's
        `prediction_type`).
        """
        check_times(timestep)
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, sample.shape[0])):
            raise ValueError(
                f"timestep must be a scalar or have shape ({sample.shape[0]},), got shape {tuple(t.shape)}."
            )
        if self.config.self_conditioning:
            condition = torch.zeros_like(sample) if self_condition is None else self_condition.to(sample.dtype)
            if condition.shape != sample.shape:
                raise ValueError(f"self_condition must have the sample's shape {tuple(sample.shape)}, got "
                                 f"{tuple(condition.shape)}.")
            sample = torch.cat([sample, condition], dim=1)
        elif self_condition is not None:
            raise ValueError("self_condition was given, but this model was not trained with self_conditioning.")
        if self.config.position_channels:
            batch, height, width = sample.shape[0], sample.shape[-2], sample.shape[-1]
            if positions is None:
                positions = self.position_grid(height, width, sample.device, sample.dtype).expand(batch, 2, height, width)
            elif positions.shape != (batch, 2, height, width):
                raise ValueError(f"positions must have shape {(batch, 2, height, width)} (column and row of every "
                                 f"pixel), got {tuple(positions.shape)}.")
            sample = torch.cat([sample, positions.to(device=sample.device, dtype=sample.dtype)], dim=1)
        elif positions is not None:
            raise ValueError("positions was given, but this model has no position_channels.")
        t, patch = t.to(torch.float32), self.config.patch_size
        if patch == 1:
            return super().forward(sample, t, class_labels=class_labels, return_dict=return_dict)
        if sample.shape[-2] % patch or sample.shape[-1] % patch:
            raise ValueError(f"The sample's height and width must be multiples of patch_size={patch}, got "
                             f"{tuple(sample.shape[-2:])}.")
        patches = super().forward(F.pixel_unshuffle(sample, patch), t, class_labels=class_labels).sample
        output = F.pixel_shuffle(patches, patch)
        return UNet2DOutput(sample=output) if return_dict else (output,)
