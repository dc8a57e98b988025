"""Autoguidance and guidance intervals: what a guide must share with the model it guides, and the
checked forms of the guidance settings a pipeline stores.

Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself") extrapolates
from a weaker version of the same model, `guide + w (main - guide)`, which pushes samples away from
what the weaker model gets wrong: outliers and malformed samples, for unconditional models too. A
guidance interval (Kynkaanniemi et al. 2024) applies guidance only in a band of noise levels,
sigma_lo < sigma <= sigma_hi, where sigma = sigma_t / alpha_t is EDM's noise level in model space.

`GuidanceMixin` gives `CosineDDIMPipeline` the guided denoiser (`predict`), the per-step plan of which
guidance applies (`guidance_plan`) and its cost (`network_evaluations`).

This module travels with saved pipelines, so it imports only the standard library and torch.
"""

import math

import torch

# What an autoguidance guide must share with the main UNet: the noise schedule, the inputs and outputs.
GUIDE_KEYS = ("schedule", "min_signal_rate", "max_signal_rate", "in_channels", "out_channels", "sample_size",
              "num_class_embeds")
# `sampling_defaults`: what the pipeline's `__call__` uses for the arguments it is not given.
# `guidance_scale` (classifier-free guidance) applies only to calls with class labels; `class_prior` (one
# probability per class) makes a call without class labels draw them, so that it samples p(x) = sum_y p(y) p(x | y).
# `with_class_labels` (a mapping of `CALL_DEFAULT_KEYS`) replaces the others for calls *given* `class_labels`:
# asking for a class is served best by other settings (e.g. stronger classifier-free guidance, no
# autoguidance) than sampling the data's own mix of classes. It may also set `timestep_spacing`: the
# step spacing of those calls, in place of the scheduler's own (which serves the calls without them).
CALL_DEFAULT_KEYS = ("num_inference_steps", "autoguidance_scale", "guidance_interval", "guidance_scale")
WITH_CLASS_LABELS = "with_class_labels"
CLASS_CALL_KEYS = CALL_DEFAULT_KEYS + ("timestep_spacing",)
SAMPLING_DEFAULT_KEYS = CALL_DEFAULT_KEYS + ("class_prior", WITH_CLASS_LABELS)
# The schedulers' `timestep_spacing` values (`schedulers.noise_schedule.SPACINGS`, repeated here because this
# module travels with saved pipelines without the schedulers' code).
STEP_SPACINGS = ("time", "log_snr", "karras")
NO_INTERVAL = (0.0, math.inf)


def check_guide_matches(unet, guide_unet) -> None:
    """Raise `ValueError` unless `guide_unet` can guide `unet`: the same noise schedule, channels, size and classes."""
    differ = [k for k in GUIDE_KEYS if k not in guide_unet.config
              or _plain(guide_unet.config[k]) != _plain(unet.config[k])]
    if differ:
        raise ValueError("guide_unet cannot guide this unet: they differ in " + ", ".join(
            f"{k} ({guide_unet.config.get(k)!r} vs {unet.config[k]!r})" for k in differ)
            + ". An autoguidance guide is a weaker version of the same model: same schedule, channels, size and classes.")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def check_guidance_interval(interval) -> tuple[float, float]:
    """`(sigma_lo, sigma_hi)` with 0 <= sigma_lo < sigma_hi, as floats (sigma_hi None or inf: no upper
    bound); else `ValueError`."""
    try:
        low, high = interval
        low, high = float(low), math.inf if high is None else float(high)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two noise levels (sigma_lo, sigma_hi) with sigma = sigma_t / "
                         f"alpha_t, e.g. (0.3, 5.0), got {interval!r}.") from None
    if not 0.0 <= low < high:
        raise ValueError(f"guidance_interval must satisfy 0 <= sigma_lo < sigma_hi, got {interval!r}.")
    return low, high


def check_sampling_defaults(defaults: dict | None) -> dict:
    """`sampling_defaults` checked: only `SAMPLING_DEFAULT_KEYS`, each valid (the interval as a list), and
    `with_class_labels` a mapping of `CLASS_CALL_KEYS` checked likewise."""
    defaults = _check_call_defaults(defaults, SAMPLING_DEFAULT_KEYS, "sampling_defaults")
    if defaults.get("class_prior") is not None:
        defaults["class_prior"] = check_class_prior(defaults["class_prior"])
    if defaults.get(WITH_CLASS_LABELS) is not None:
        given = defaults[WITH_CLASS_LABELS]
        if not isinstance(given, dict):
            raise ValueError(f"sampling_defaults {WITH_CLASS_LABELS} must be a mapping of some of "
                             f"{list(CLASS_CALL_KEYS)} (the defaults of calls given class_labels), got {given!r}.")
        defaults[WITH_CLASS_LABELS] = _check_call_defaults(given, CLASS_CALL_KEYS,
                                                           f"sampling_defaults {WITH_CLASS_LABELS}")
    return defaults


def _check_call_defaults(defaults: dict | None, keys: tuple[str, ...], where: str) -> dict:
    """A copy of `defaults` with only `keys`, the steps, weights and interval among them valid."""
    defaults = dict(defaults or {})
    unknown = sorted(set(defaults) - set(keys))
    if unknown:
        raise ValueError(f"Unknown {where} {unknown}; expected some of {list(keys)}.")
    steps = defaults.get("num_inference_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"{where} num_inference_steps must be an integer >= 1, got {steps!r}.")
    for name in ("autoguidance_scale", "guidance_scale"):
        weight = defaults.get(name)
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not math.isfinite(weight) or weight < 1.0):
            raise ValueError(f"{where} {name} must be a number >= 1 (1: no guidance), got {weight!r}.")
    if defaults.get("guidance_interval") is not None:
        low, high = check_guidance_interval(defaults["guidance_interval"])
        defaults["guidance_interval"] = [low, high if math.isfinite(high) else None]  # JSON has no inf
    if "timestep_spacing" in defaults:
        check_timestep_spacing(defaults["timestep_spacing"], f"{where} ")
    return defaults


def check_timestep_spacing(spacing, where: str = "") -> None:
    """Raise `ValueError` unless `spacing` is one of `STEP_SPACINGS`; `where` prefixes the message."""
    if spacing not in STEP_SPACINGS:
        raise ValueError(f"{where}timestep_spacing must be one of {list(STEP_SPACINGS)}, got {spacing!r}.")


def check_class_prior(prior) -> list[float]:
    """`prior` (one weight >= 0 per class, not all zero) as probabilities summing to 1; else `ValueError`."""
    try:
        weights = [float(w) for w in prior]
    except (TypeError, ValueError):
        weights = None
    if (not weights or isinstance(prior, (str, dict)) or not all(math.isfinite(w) and w >= 0 for w in weights)
            or sum(weights) <= 0):
        raise ValueError(f"class_prior must be one weight >= 0 per class, not all zero (e.g. the training set's class "
                         f"frequencies), got {prior!r}.")
    total = sum(weights)
    return [w / total for w in weights]


class GuidanceMixin:
    """Classifier-free guidance, autoguidance and guidance intervals for `CosineDDIMPipeline` (listed
    before it): what each sampling step evaluates, and what a call costs."""

    def _denoiser(self, unet, sample: torch.Tensor, t, labels: torch.Tensor | None, guidance_scale: float,
                  self_condition: torch.Tensor | None = None):
        """One network's output at time `t`, with classifier-free guidance when `guidance_scale != 1`."""
        null = self.null_class_label
        extra = {} if self_condition is None else {"self_condition": self_condition}
        if labels is None:
            none = None if null is None else torch.full((sample.shape[0],), null, device=sample.device)
            return unet(sample, t, class_labels=none, **extra).sample
        if guidance_scale == 1.0:
            return unet(sample, t, class_labels=labels, **extra).sample
        if self_condition is not None:
            extra = {"self_condition": torch.cat([self_condition, self_condition])}
        both = unet(torch.cat([sample, sample]), t, class_labels=torch.cat([labels, torch.full_like(labels, null)]),
                    **extra).sample
        cond, uncond = both.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def predict(self, sample: torch.Tensor, t, labels: torch.Tensor | None = None, guidance_scale: float = 1.0,
                autoguidance_scale: float = 1.0, self_condition: torch.Tensor | None = None):
        """The UNet's output at time `t`, guided.

        * classifier-free guidance (`guidance_scale != 1`, needs `labels`): `uncond + w (cond - uncond)`;
        * autoguidance (`autoguidance_scale != 1`, needs `guide_unet`; Karras et al. 2024):
          `guide + w_a (main - guide)`, where `main` is the (classifier-free guided) UNet output and
          `guide` is `guide_unet`'s output for the same labels. Outputs of one `prediction_type` combine
          linearly, so this is the same combination of the two denoisers' clean-image estimates.

        `labels=None` on a class-conditional model means "no class" (unconditional). `self_condition`:
        for a self-conditioned UNet, the previous clean-image estimate (None: zeros). Each network
        evaluation costs one forward pass of its batch; nothing here reads device values back.
        """
        main = self._denoiser(self.unet, sample, t, labels, guidance_scale, self_condition)
        if autoguidance_scale == 1.0:
            return main
        guide = self._denoiser(self.guide_unet, sample, t, labels, 1.0, self_condition)
        return guide + autoguidance_scale * (main - guide)

    @property
    def self_conditioned(self) -> bool:
        """Whether the UNet takes its previous clean-image estimate (`self_conditioning`, Chen et al. 2022)."""
        return bool(self.unet.config.get("self_conditioning", False))

    def noise_level(self, t) -> float:
        """sigma = sigma_t / alpha_t (EDM's noise level in model space) at time `t`, as `guidance_interval` states it."""
        alpha, sigma = self.scheduler.signal_noise_rates(torch.as_tensor(float(t), dtype=torch.float64))
        return float(sigma / alpha)

    def call_defaults(self, class_labels_given: bool = False) -> dict:
        """The stored `sampling_defaults` a call uses: for a call given `class_labels`, with its
        `with_class_labels` settings in place of the others (`class_prior` is then unused)."""
        stored = dict(self.config.get("sampling_defaults") or {})
        given = stored.pop(WITH_CLASS_LABELS, None)
        return {**stored, **given} if class_labels_given and given else stored

    def sampling_default(self, name: str, given, class_labels_given: bool = False):
        """`given` unless it is None, else this pipeline's stored default for `name` (None if unset) for a
        call with or without given `class_labels` (`call_defaults`)."""
        if given is not None:
            return given
        return self.call_defaults(class_labels_given).get(name)

    @property
    def class_prior(self) -> list[float] | None:
        """The class probabilities a call without `class_labels` draws its labels from (`sampling_defaults`), or None."""
        return self.sampling_default("class_prior", None)

    @property
    def draws_class_labels(self) -> bool:
        """Whether a call without `class_labels` draws them from a stored `class_prior` (else it samples
        unconditionally: the "no class" label of a class-conditional model)."""
        return self.class_prior is not None

    def draw_class_labels(self, batch_size: int, generator=None) -> torch.Tensor:
        """`batch_size` labels (B,) drawn from `class_prior` on the execution device: with `generator`
        (one, or a list with one per image, as `__call__` takes it) the draw is reproducible."""
        prior = self.class_prior
        if prior is None:
            raise ValueError("This pipeline stores no class_prior to draw class labels from.")
        generators = generator if isinstance(generator, list) else [generator]
        count = 1 if isinstance(generator, list) else batch_size
        weights = torch.tensor(prior, dtype=torch.float64)
        draws = []
        for g in generators:  # each generator draws on its own device
            on_device = weights.to(g.device if g is not None else "cpu")
            draws.append(torch.multinomial(on_device, count, replacement=True, generator=g).cpu())
        return torch.cat(draws).to(self._execution_device)

    def classifier_free_scale(self, guidance_scale: float | None, conditional: bool,
                              class_labels_given: bool = False) -> float:
        """The classifier-free guidance weight a call uses: `guidance_scale` when given, else (for a call
        with class labels, given or drawn) the stored `guidance_scale`, else 1.0 (none)."""
        if guidance_scale is not None:
            return float(guidance_scale)
        if not conditional:
            return 1.0
        return float(self.sampling_default("guidance_scale", None, class_labels_given) or 1.0)

    def sampling_scheduler(self, timestep_spacing: str | None = None, class_labels_given: bool = False):
        """The scheduler a call steps with: `self.scheduler`, or a copy of it (same class and config) with
        another `timestep_spacing`: the one given, else the stored default of a call given class labels
        (`with_class_labels`), when it differs from the scheduler's own. `self.scheduler` is left as it is."""
        spacing = self.sampling_default("timestep_spacing", timestep_spacing, class_labels_given)
        if spacing is None or spacing == self.scheduler.config.get("timestep_spacing"):
            return self.scheduler
        check_timestep_spacing(spacing)
        if "timestep_spacing" not in self.scheduler.config:
            raise ValueError(f"{type(self.scheduler).__name__} has no timestep_spacing, so timestep_spacing="
                             f"{spacing!r} cannot apply; use CosineDDIMScheduler or CosineDPMSolverScheduler.")
        return type(self.scheduler).from_config(self.scheduler.config, timestep_spacing=spacing)

    def guidance_plan(self, num_inference_steps: int | None = None, guidance_scale: float = 1.0,
                      autoguidance_scale: float | None = None, guidance_interval=None,
                      class_labels_given: bool = False, scheduler=None) -> list[tuple[float, float]]:
        """(guidance_scale, autoguidance_scale) for each sampling step, as `__call__` would use them
        (guidance only at noise levels inside `guidance_interval`); arguments left None take the stored
        defaults of a call with or without given class labels. Sets the timesteps of `scheduler` (the
        call's `sampling_scheduler`; `self.scheduler` when None)."""
        scheduler = self.scheduler if scheduler is None else scheduler
        num_inference_steps = self.inference_steps(num_inference_steps, class_labels_given)
        autoguidance_scale = float(self.sampling_default("autoguidance_scale", autoguidance_scale,
                                                         class_labels_given) or 1.0)
        interval = self.sampling_default("guidance_interval", guidance_interval, class_labels_given)
        low, high = NO_INTERVAL if interval is None else check_guidance_interval(interval)
        scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        times = scheduler.timesteps.cpu()  # one read-back, before sampling starts
        return [(guidance_scale, autoguidance_scale) if low < self.noise_level(t) <= high else (1.0, 1.0)
                for t in times]

    def network_evaluations(self, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                            autoguidance_scale: float | None = None, guidance_interval=None,
                            class_labels: bool | None = None, timestep_spacing: str | None = None) -> int:
        """Forward passes per image that `__call__` makes with these arguments: one per step, one more per
        step for classifier-free guidance (with class labels) and for each network autoguidance adds.
        Arguments left None take the pipeline's `sampling_defaults`, as `__call__` does. `class_labels`:
        True for a call given them (its `with_class_labels` defaults apply), None for a call without them
        (which draws labels when a `class_prior` is stored), False for unconditional sampling."""
        total = 0
        given = bool(class_labels)
        conditional = given or (class_labels is None and self.draws_class_labels)
        guidance_scale = self.classifier_free_scale(guidance_scale, conditional, given)
        scheduler = self.sampling_scheduler(timestep_spacing, given)
        for cfg, auto in self.guidance_plan(num_inference_steps, guidance_scale, autoguidance_scale,
                                            guidance_interval, given, scheduler):
            main = 2 if conditional and cfg != 1.0 else 1
            total += main + (1 if auto != 1.0 else 0)
        return total

    def inference_steps(self, num_inference_steps: int | None = None, class_labels_given: bool = False) -> int:
        """The steps a call takes: `num_inference_steps` when given, else a distilled student's
        `distilled_steps`, else the stored default (of a call with or without given class labels), else 20."""
        if num_inference_steps is not None:
            return num_inference_steps
        return (self.config.get("distilled_steps")
                or self.sampling_default("num_inference_steps", None, class_labels_given) or 20)
