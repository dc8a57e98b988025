"""DDIM inversion and interpolation between noises, for `CosineDDIMPipeline` (a mixin).

This module travels with saved pipelines, so it imports only torch and numpy.
"""

import numpy as np
import torch


def slerp(start: torch.Tensor, end: torch.Tensor, weights) -> torch.Tensor:
    """Spherical interpolation between noises `start` and `end` (same shape) at each weight in [0, 1].

    Returns shape `(len(weights), *start.shape)`. Gaussian noise lives near a sphere; moving along
    it (rather than the straight chord, whose midpoint has too small a norm) keeps every frame a
    plausible starting noise (Shoemake 1985; Song et al. 2020, Sec. 5.3).
    """
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    a, b = start.double().flatten(), end.double().flatten()
    cos = torch.clamp(torch.dot(a, b) / (a.norm() * b.norm()), -1.0, 1.0)
    theta = torch.arccos(cos)
    if theta < 1e-6:  # (nearly) parallel: the chord is the arc
        out = (1 - weights)[:, None] * a + weights[:, None] * b
    else:
        out = (torch.sin((1 - weights) * theta)[:, None] * a + torch.sin(weights * theta)[:, None] * b) / torch.sin(theta)
    return out.reshape(len(weights), *start.shape).to(start.dtype)


class InversionMixin:
    """`invert` (images -> the noise that regenerates them) and `interpolate` (images along the
    spherical path between two noises), for a `CosineDDIMPipeline` (listed before it)."""

    def _as_tensor_images(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images
        arrays = [np.asarray(image, dtype=np.float32) / 255.0 for image in images]
        arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    @torch.no_grad()
    def invert(self, images, num_inference_steps: int = 50, class_labels=None) -> torch.Tensor:
        """Deterministic DDIM run backwards: the noise that regenerates `images`.

        Args:
            images: (B, C, H, W) tensor in [0, 1], or a list of PIL images.
            num_inference_steps: steps of the inversion (use the same when regenerating).
            class_labels: for class-conditional models, the images' classes.

        Returns:
            Latents (B, C, H, W) such that `pipe(latents=..., num_inference_steps=...,
            eta=0)` approximately gives `images` back. Each step from time s to t > s uses the
            model's prediction at the current sample (x_s, t), the usual explicit DDIM inversion;
            its error shrinks as `num_inference_steps` grows.
        """
        images = self._as_tensor_images(images)
        channels = self.unet.config.in_channels
        if images.ndim != 4 or images.shape[1] != channels:
            raise ValueError(f"invert() needs images shaped (B, {channels}, H, W) for this {channels}-channel model, "
                             f"got {tuple(images.shape)}.")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError(f"invert() needs images in [0, 1], got values from {images.min().item():g} to "
                             f"{images.max().item():g} (divide 0..255 images by 255).")
        x = self.normalize(images.to(self._execution_device)).to(self.unet.dtype)
        labels = self._class_labels(class_labels, x.shape[0])
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        times = list(scheduler.timesteps.flip(0))  # 1/N, 2/N, ..., 1
        previous, estimate = 0.0, None
        for t in self.progress_bar(times):
            x0_hat, eps_hat = scheduler.convert_model_output(
                self.predict(x, t, labels, self_condition=estimate).float(), t, x.float())
            if self.self_conditioned:
                estimate = x0_hat.to(x.dtype)
            if previous > 0:  # the sample lies at `previous`: re-derive x0 there from the same noise estimate
                alpha_s, sigma_s = scheduler.signal_noise_rates(previous, x)
                x0_hat = (x.float() - sigma_s * eps_hat) / alpha_s
            else:
                x0_hat = x.float()  # the first step starts from the clean images themselves
            alpha_t, sigma_t = scheduler.signal_noise_rates(t, x)
            x = (alpha_t * x0_hat + sigma_t * eps_hat).to(self.unet.dtype)
            previous = float(t)
        return x

    @torch.no_grad()
    def interpolate(self, start, end, num_frames: int = 8, num_inference_steps: int = 20, output_type: str = "pil",
                    class_labels=None, guidance_scale: float | None = None):
        """Images along the spherical path between two noises (B=1 latents, shape (1, C, H, W)).

        To interpolate between two images, invert them first: `pipe.interpolate(pipe.invert(a, n),
        pipe.invert(b, n), num_inference_steps=n)`. Returns `num_frames` images in `output_type`. Without
        `class_labels`, every frame of a class-conditional model uses its "no class" label, as `invert` does
        (no labels drawn from a stored `class_prior`: the path stays in one class).
        """
        frames = slerp(start[0], end[0], torch.linspace(0, 1, num_frames))
        if class_labels is None and self.draws_class_labels:
            class_labels = self.null_class_label
        return self(latents=frames, num_inference_steps=num_inference_steps, output_type=output_type,
                    class_labels=class_labels, guidance_scale=guidance_scale).images
