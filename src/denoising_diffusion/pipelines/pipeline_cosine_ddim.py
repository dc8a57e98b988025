"""Unconditional image generation with a continuous-time UNet and a continuous-time scheduler.

A drop-in for diffusers' `DDIMPipeline`: same call signature and outputs. A saved folder carries
the code of its components (`pipeline_saving`), so it also loads with plain diffusers:
`DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)`.

This module travels with saved pipelines, so it imports only torch, numpy, diffusers and its
siblings `guidance`, `inversion` and `pipeline_saving`.
"""

import math

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .guidance import (WITH_CLASS_LABELS, GuidanceMixin, check_guidance_interval, check_guide_matches,
                       check_sampling_defaults)
from .inversion import InversionMixin
from .pipeline_saving import SavesCodeMixin

OUTPUT_TYPES = ("pil", "np", "pt")
# What the UNet and the scheduler must agree on: the times t in [0, 1] mean the same noise levels.
SCHEDULE_KEYS = ("schedule", "min_signal_rate", "max_signal_rate")


def check_schedules_match(unet, scheduler) -> None:
    """Raise `ValueError` unless `unet` and `scheduler` are continuous-time and share one noise schedule.

    Both interpret a time t in [0, 1] through `SCHEDULE_KEYS`; a mismatch (or a discrete-time
    scheduler such as diffusers' `DDIMScheduler`) samples at the wrong noise levels without any error.
    """
    if not hasattr(scheduler, "signal_noise_rates") or any(k not in scheduler.config for k in SCHEDULE_KEYS):
        raise ValueError(
            f"{type(scheduler).__name__} is not a continuous-time scheduler; this pipeline needs one of "
            f"{[c.__name__ for c in getattr(scheduler, 'compatibles', [])] or 'CosineDDIMScheduler, CosineDPMSolverScheduler'}"
            " (e.g. CosineDPMSolverScheduler.from_config(pipe.scheduler.config))."
        )
    if any(k not in unet.config for k in SCHEDULE_KEYS):
        raise ValueError(f"{type(unet).__name__} is not a continuous-time UNet; this pipeline needs a ContinuousUNet2DModel.")
    differ = [
        k for k in SCHEDULE_KEYS
        if not (unet.config[k] == scheduler.config[k] or (
            isinstance(unet.config[k], float) and math.isclose(unet.config[k], scheduler.config[k], rel_tol=1e-6)))
    ]
    if differ:
        theirs = ", ".join(f"{k}={scheduler.config[k]!r}" for k in differ)
        ours = ", ".join(f"{k}={unet.config[k]!r}" for k in differ)
        raise ValueError(
            f"The scheduler ({theirs}) does not match the UNet's noise schedule ({ours}): sampling would use the "
            f"wrong noise levels. Use {type(scheduler).__name__}.from_config(scheduler.config, {ours})."
        )


class CosineDDIMPipeline(GuidanceMixin, InversionMixin, SavesCodeMixin, DiffusionPipeline):
    r"""Pipeline for unconditional image generation with continuous-time DDIM.

    Parameters:
        unet ([`ContinuousUNet2DModel`]): denoiser conditioned on a continuous time t in [0, 1].
        scheduler ([`CosineDDIMScheduler`]): continuous-time scheduler with the same noise schedule.
        image_mean (`list[float]`, *optional*): per-channel mean the training images were
            standardised with (defaults to 0.5: images in [-1, 1]).
        image_std (`list[float]`, *optional*): per-channel standard deviation likewise (default 0.5).
            Generated samples are mapped back with `x * image_std + image_mean`, then clipped to [0, 1].
        distilled_steps (`int`, *optional*): for a student of progressive distillation, the number of
            DDIM steps it was distilled for; `__call__` then uses it when `num_inference_steps` is not given.
        class_names (`list[str]`, *optional*): for a class-conditional UNet, the names of its classes
            0..N-1 (`class_labels` may then name them); stored in the config as `{"0": name, ...}`.
        guide_unet ([`ContinuousUNet2DModel`], *optional*): a weaker version of `unet` (e.g. an early snapshot
            of the same training run) for autoguidance (Karras et al. 2024); see `autoguidance_scale`.
        guide_info (`dict`, *optional*): where `guide_unet` comes from (e.g. `{"kind": "ema_snapshot",
            "step": 290, "of_steps": 1160}`), shown on the model card.
        sampling_defaults (`dict`, *optional*): what `__call__` uses when an argument is not given:
            `num_inference_steps`, `autoguidance_scale`, `guidance_interval`, and for a class-conditional
            model `guidance_scale` (used with class labels) and `class_prior` (one probability per class:
            a call without `class_labels` draws them from it) (the measured best for this model, so that
            `pipe(batch_size=16)` gives its best samples). `with_class_labels`, a mapping of the first four,
            replaces them for calls given `class_labels` (e.g. `{"guidance_scale": 5.0,
            "autoguidance_scale": 1.0}`: stronger classifier-free guidance and no autoguidance when a class
            is asked for), so that `pipe(class_labels=[2] * 16)` gives the best samples of class 2. It may
            also set `timestep_spacing`: the step spacing of those calls, in place of the scheduler's own.

    The UNet and the scheduler must share one noise schedule (`SCHEDULE_KEYS`); that is checked here and
    whenever `pipe.scheduler` or `pipe.unet` is replaced. `from_pretrained` is diffusers' own loader
    (every standard argument: `dtype`, `variant`, `device_map`, `use_safetensors`, component overrides,
    Hub arguments, ...) and builds the components from the installed classes, so none of the code stored
    in a saved folder runs.
    """

    model_cpu_offload_seq = "unet->guide_unet"
    _optional_components = ["guide_unet"]

    def __init__(self, unet, scheduler, image_mean: list[float] | None = None, image_std: list[float] | None = None,
                 distilled_steps: int | None = None, class_names: list[str] | dict[str, str] | None = None,
                 guide_unet=None, guide_info: dict | None = None, sampling_defaults: dict | None = None):
        super().__init__()
        channels = unet.config.in_channels
        image_mean = [0.5] * channels if image_mean is None else [float(v) for v in image_mean]
        image_std = [0.5] * channels if image_std is None else [float(v) for v in image_std]
        for name, values in (("image_mean", image_mean), ("image_std", image_std)):
            if len(values) != channels:
                raise ValueError(f"{name} needs one value per channel ({channels}), got {values}.")
        if min(image_std) <= 0:
            raise ValueError(f"image_std values must be positive, got {image_std}.")
        if distilled_steps is not None and (isinstance(distilled_steps, bool) or not isinstance(distilled_steps, int)
                                            or distilled_steps < 1):
            raise ValueError(f"distilled_steps must be an integer >= 1 (or None), got {distilled_steps!r}.")
        num_classes = None if unet.config.num_class_embeds is None else unet.config.num_class_embeds - 1
        if class_names is not None:
            if isinstance(class_names, dict):  # as stored: {"0": name, "1": name, ...}
                class_names = [class_names[key] for key in sorted(class_names, key=int)]
            class_names = [str(name) for name in class_names]
            if len(class_names) != num_classes or len(set(class_names)) != len(class_names):
                raise ValueError(f"class_names needs {num_classes or 0} distinct names, one per class of the UNet, "
                                 f"got {class_names}.")
            # stored as a mapping: diffusers' loader takes every list in model_index.json for a component
            class_names = {str(i): name for i, name in enumerate(class_names)}
        sampling_defaults = check_sampling_defaults(sampling_defaults)
        given = sampling_defaults.get(WITH_CLASS_LABELS)
        if given is not None and num_classes is None:
            raise ValueError(f"sampling_defaults sets {WITH_CLASS_LABELS} (the defaults of calls given class_labels), "
                             "but the UNet is unconditional (no num_class_embeds).")
        for where, defaults in (("sampling_defaults", sampling_defaults),
                                (f"sampling_defaults {WITH_CLASS_LABELS}", given or {})):
            if guide_unet is None and defaults.get("autoguidance_scale", 1.0) != 1.0:
                raise ValueError(f"{where} sets autoguidance_scale, but there is no guide_unet.")
            if num_classes is None and defaults.get("guidance_scale", 1.0) != 1.0:
                raise ValueError(f"{where} sets guidance_scale, but the UNet is unconditional (no num_class_embeds).")
        prior = sampling_defaults.get("class_prior")
        if prior is not None and len(prior) != (num_classes or 0):
            raise ValueError(f"sampling_defaults class_prior needs one probability per class of the UNet "
                             f"({num_classes or 0}), got {len(prior)}.")
        self.register_modules(unet=unet, scheduler=scheduler, guide_unet=guide_unet)
        self.register_to_config(image_mean=image_mean, image_std=image_std, distilled_steps=distilled_steps,
                                class_names=class_names, guide_info=dict(guide_info) if guide_info else None,
                                sampling_defaults=sampling_defaults or None)

    def __setattr__(self, name, value):
        if name in ("unet", "scheduler") and value is not None:
            other = self.__dict__.get("scheduler" if name == "unet" else "unet")
            if other is not None:
                unet, scheduler = (value, other) if name == "unet" else (other, value)
                check_schedules_match(unet, scheduler)
        if name in ("unet", "guide_unet") and value is not None:
            other = self.__dict__.get("guide_unet" if name == "unet" else "unet")
            if other is not None:
                unet, guide = (value, other) if name == "unet" else (other, value)
                check_guide_matches(unet, guide)
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ images <-> model space
    def _channel_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.config.image_mean, device=like.device, dtype=torch.float32).reshape(shape)
        std = torch.tensor(self.config.image_std, device=like.device, dtype=torch.float32).reshape(shape)
        return mean, std

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], shape (B, C, H, W) -> the standardised space the model works in."""
        mean, std = self._channel_stats(images)
        return (images.float() - mean) / std

    def denormalize(self, samples: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> images in [0, 1] (clipped), float32."""
        mean, std = self._channel_stats(samples)
        return (samples.float() * std + mean).clamp(0, 1)

    def _image_shape(self, batch_size: int) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, self.unet.config.in_channels, *size)

    def to_output(self, images: torch.Tensor, output_type: str):
        """Images in [0, 1] (B, C, H, W) -> "pt" tensor, "np" array (B, H, W, C) or "pil" list."""
        if output_type == "pt":
            return images
        array = images.cpu().permute(0, 2, 3, 1).numpy()
        return self.numpy_to_pil(array) if output_type == "pil" else array

    # ------------------------------------------------------------------ the denoiser
    @property
    def null_class_label(self) -> int | None:
        """The "no class" label of a class-conditional UNet (its last class embedding), else None."""
        n = self.unet.config.num_class_embeds
        return None if n is None else n - 1

    def _class_labels(self, class_labels, batch_size: int) -> torch.Tensor | None:
        """Checked labels (B,) on the execution device, or None when not given. The "no class" label
        (`null_class_label`) is accepted: unconditional samples of a class-conditional model."""
        null = self.null_class_label
        if class_labels is None:
            return None
        if null is None:
            raise ValueError("class_labels were given, but this model is unconditional (its UNet has no num_class_embeds).")
        labels = torch.as_tensor(self._class_indices(class_labels), device=self._execution_device).reshape(-1)
        if labels.is_floating_point() and not bool((labels == labels.round()).all()):
            raise ValueError(f"class_labels must be whole numbers (class indices) or class names, got {class_labels!r}.")
        labels = labels.long()
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(f"Got {labels.numel()} class_labels for batch_size={batch_size}; give one or one per image.")
        if labels.min() < 0 or labels.max() > null:
            raise ValueError(f"class_labels must be in [0, {null - 1}] for this model (or {null}, its \"no class\" "
                             f"label), got {labels.tolist()}.")
        return labels

    def _asks_for_classes(self, class_labels) -> bool:
        """Whether a call's `class_labels` ask for a class: given, and not only the "no class" label
        (`null_class_label`, read without a device sync: a tensor on a GPU counts as asking)."""
        if class_labels is None:
            return False
        if isinstance(class_labels, torch.Tensor) and class_labels.device.type != "cpu":
            return True
        values = np.asarray(class_labels.tolist() if isinstance(class_labels, torch.Tensor) else class_labels,
                            dtype=object).reshape(-1)
        return not all(isinstance(v, (int, np.integer)) and v == self.null_class_label for v in values)

    @property
    def class_names(self) -> list[str] | None:
        """The names of the classes 0..N-1 of a class-conditional model, if it has them."""
        names = self.config.get("class_names")
        return None if names is None else [names[key] for key in sorted(names, key=int)]

    def _class_indices(self, class_labels):
        """Class names (str) replaced by their indices in `class_names`; other values unchanged."""
        values = [class_labels] if isinstance(class_labels, str) else class_labels
        if isinstance(values, (list, tuple)) and any(isinstance(v, str) for v in values):
            names = self.class_names or []
            unknown = [v for v in values if isinstance(v, str) and v not in names]
            if unknown:
                raise ValueError(f"Unknown class names {unknown}; this model's classes are {names or 'unnamed'} "
                                 "(or give indices).")
            values = [names.index(v) if isinstance(v, str) else v for v in values]
        return values

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        num_inference_steps: int | None = None,
        use_clipped_model_output: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        latents: torch.Tensor | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        autoguidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        timestep_spacing: str | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images from Gaussian noise.

        Args:
            batch_size (`int`, defaults to 1): how many images.
            generator (`torch.Generator` or a list of `batch_size` of them, *optional*): for
                reproducible noise.
            eta (`float`, defaults to 0.0): 0 is deterministic DDIM, 1 is DDPM-like sampling.
            num_inference_steps (`int`, *optional*): denoising steps (any integer >= 1); defaults to
                `distilled_steps` for a distilled student, else `sampling_defaults`, else 20. Every
                default below, and this one, comes from `sampling_defaults["with_class_labels"]` first in
                a call given `class_labels` (other than the "no class" label alone).
            use_clipped_model_output (`bool`, *optional*): passed to the scheduler's `step` (as in
                diffusers' `DDIMPipeline`); matters only with the scheduler's `clip_sample`.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (B, H, W, C) or `"pt"`
                (B, C, H, W); values in [0, 1].
            return_dict (`bool`, defaults to True): return an `ImagePipelineOutput` or a tuple.
            latents (`torch.Tensor`, *optional*): the starting noise, shape (B, C, H, W), instead of
                drawing it (e.g. fixed noise to compare samples across training); its B wins over
                `batch_size`.
            class_labels (`int`, `str`, list or tensor, *optional*): for class-conditional models, the
                class of each image, as an index or one of `class_names` (one value is used for all).
                Omitted: drawn from a stored `class_prior` (with `generator`), else "no class"
                (`null_class_label`, also accepted as a label): unconditional samples.
            guidance_scale (`float`, *optional*): classifier-free guidance (Ho & Salimans 2022) towards
                `class_labels`: `uncond + guidance_scale * (cond - uncond)`; 1.0 is plain conditional
                sampling. Defaults to `sampling_defaults` for calls with class labels (given or drawn), else 1.0.
            autoguidance_scale (`float`, *optional*): autoguidance (Karras et al. 2024, "Guiding a Diffusion
                Model with a Bad Version of Itself") with `guide_unet`: `guide + autoguidance_scale * (main -
                guide)`; 1.0 is off. Works for unconditional and class-conditional models, and combines with
                `guidance_scale` (then `main` is the classifier-free guided output). Defaults to
                `sampling_defaults`, else 1.0. Each guided step costs one more network evaluation.
            guidance_interval (`tuple[float, float]`, *optional*): apply both guidances only at noise levels
                `sigma_lo < sigma <= sigma_hi`, with sigma = sigma_t / alpha_t (Kynkäänniemi et al. 2024);
                other steps cost one evaluation. Defaults to `sampling_defaults`, else every step
                (`(0, inf)`). `network_evaluations(...)` counts what a call costs.
            timestep_spacing (`str`, *optional*): `"log_snr"`, `"time"` or `"karras"`: where this call's steps
                fall, in place of the scheduler's own (left unchanged). Defaults to `sampling_defaults[
                "with_class_labels"]` in a call given `class_labels`, else the scheduler's `timestep_spacing`.

        Returns:
            [`~pipelines.ImagePipelineOutput`] with `images`, or `(images,)`.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        drawn = class_labels is None and self.draws_class_labels
        latents = self._check_arguments(batch_size, generator, eta, latents, class_labels, guidance_scale,
                                        autoguidance_scale, guidance_interval, drawn)
        batch_size = batch_size if latents is None else latents.shape[0]
        image = self._initial_noise(batch_size, generator, latents)
        labels = self.draw_class_labels(batch_size, generator) if drawn else self._class_labels(class_labels, batch_size)
        given = self._asks_for_classes(class_labels)  # then the stored `with_class_labels` defaults apply
        guidance_scale = self.classifier_free_scale(guidance_scale, labels is not None, given)
        scheduler = self.sampling_scheduler(timestep_spacing, given)
        plan = self.guidance_plan(num_inference_steps, guidance_scale, autoguidance_scale, guidance_interval, given,
                                  scheduler)
        if any(auto != 1.0 for _, auto in plan) and self.guide_unet is None:
            raise ValueError(f"autoguidance_scale={self.sampling_default('autoguidance_scale', autoguidance_scale, given)} "
                             "needs a guide_unet, and this pipeline has none (pass autoguidance_scale=1.0).")
        image = self._denoise(image, labels, plan, eta, generator, bool(use_clipped_model_output), scheduler)
        images = self.to_output(self.denormalize(image), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def _initial_noise(self, batch_size: int, generator, latents: torch.Tensor | None) -> torch.Tensor:
        """x_T: `latents` (checked against the image shape) or fresh Gaussian noise, times the scheduler's
        `init_noise_sigma`, on the execution device in the UNet's dtype."""
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"Got a list of {len(generator)} generators for batch_size={batch_size}; they must match.")
        shape = self._image_shape(batch_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        elif not torch.isfinite(latents).all():  # NaN noise would come out as blank images, silently
            bad = int((~torch.isfinite(latents)).sum())
            raise ValueError(f"latents must be finite; {bad} of their {latents.numel()} values are NaN or inf.")
        return latents.to(device=self._execution_device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma

    def _denoise(self, image: torch.Tensor, labels, plan: list[tuple[float, float]], eta: float, generator,
                 use_clipped_model_output: bool, scheduler) -> torch.Tensor:
        """The sampling loop over `scheduler`'s timesteps (the call's `sampling_scheduler`), guided as
        `plan` says at each step."""
        estimate = None  # a self-conditioned UNet's previous clean-image estimate
        for t, (cfg, auto) in zip(self.progress_bar(scheduler.timesteps), plan):
            model_output = self.predict(scheduler.scale_model_input(image, t), t, labels, cfg, auto, estimate)
            if self.self_conditioned:
                estimate = scheduler.convert_model_output(model_output, t, image)[0].to(image.dtype)
            image = scheduler.step(model_output, t, image, eta=eta, generator=generator,
                                   use_clipped_model_output=use_clipped_model_output).prev_sample
        return image

    @staticmethod
    def _check_arguments(batch_size, generator, eta, latents, class_labels, guidance_scale, autoguidance_scale=None,
                         guidance_interval=None, labels_drawn=False):
        """Refuse arguments that would fail deep inside sampling or be silently wrong; `latents` as a tensor."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        generators = generator if isinstance(generator, list) else [generator]
        if not all(g is None or isinstance(g, torch.Generator) for g in generators):
            raise ValueError(f"generator must be a torch.Generator or a list of them (one per image), got {generator!r}; "
                             "e.g. torch.Generator().manual_seed(0).")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like sampling), got {eta!r}.")
        if guidance_scale is not None and not (isinstance(guidance_scale, (int, float))
                                               and math.isfinite(guidance_scale)):
            raise ValueError(f"guidance_scale must be a number (1.0: off; about 2 to 5 guides), got {guidance_scale!r}.")
        if guidance_scale not in (None, 1.0) and class_labels is None and not labels_drawn:
            raise ValueError(f"guidance_scale={guidance_scale} needs class_labels: guidance steers samples towards a "
                             "class, and without labels they are unconditional.")
        if autoguidance_scale is not None and not (isinstance(autoguidance_scale, (int, float))
                                                   and math.isfinite(autoguidance_scale)):
            raise ValueError(f"autoguidance_scale must be a number (1.0: off; about 1.5 to 3 guides), got {autoguidance_scale!r}.")
        if guidance_interval is not None:
            check_guidance_interval(guidance_interval)
        if latents is not None and not isinstance(latents, torch.Tensor):
            latents = torch.as_tensor(np.asarray(latents, dtype=np.float32))  # e.g. a numpy array
        return latents
