"""Publishing a trained pipeline folder: its model card, and its upload to the Hugging Face Hub.

The card (`README.md`) is rendered from the repository's `model_card.md` through
`huggingface_hub.ModelCard` from what the folder records: `training_config.yaml`,
`training_summary.json`, the UNet and scheduler configs and, once evaluated, `eval.json`.
`python -m denoising_diffusion.hub` is the command built on this module.
"""

import json
from pathlib import Path

import torch
import yaml

from .digits import BUILTIN_DATASET
from .evaluation.report import markdown_table
from .pipelines.pipeline_saving import PUSH_IGNORE, PushError, retry_command, sampling_arguments
from .pipelines.pipeline_saving import push_folder as upload_pipeline_folder

__all__ = ["PUSH_IGNORE", "PushError", "push_folder", "render_model_card", "retry_command", "write_model_card"]

# The repository's model_card.md (linked into the package, so installed copies carry it).
TEMPLATE = Path(__file__).parent / "model_card_template.md"


def _evaluation_markdown(folder: Path) -> str:
    path = folder / "eval.json"
    if not path.exists():
        return "Not evaluated yet: `python -m denoising_diffusion.evaluate --model <this repo>` prints a KID table."
    result = json.loads(path.read_text())
    head = (f"KID and FID of {result['num_samples']} samples against {result['num_real']} real images "
            f"({result['features']} features")
    if "feature_extractor_test_accuracy" in result:
        head += f"; the digits classifier's held-out accuracy is {result['feature_extractor_test_accuracy']:.3f}"
    return head + "), by sampling steps:\n\n" + markdown_table(result)


LOCAL_PATH_KEYS = ("output_dir", "train_data_dir", "dataset_name", "teacher", "resume_from_checkpoint",
                   "inception_weights")


def _is_local(value) -> bool:
    return value is not None and (Path(str(value)).expanduser().exists() or str(value).startswith((".", "/", "~")))


def _public_config(config: dict) -> dict:
    """The training configuration as the card shows it: local paths (this machine's folders) left out."""
    shown = dict(config)
    for key in LOCAL_PATH_KEYS:
        if key in shown and shown[key] is not None and (key in ("output_dir", "resume_from_checkpoint")
                                                        or _is_local(shown[key])):
            shown[key] = "<local path>"
    return shown


def _dataset_description(config: dict, summary: dict) -> tuple[str, str | None]:
    """(the data in words, the Hub dataset id if it is one)."""
    size = f"{config['resolution']}x{config['resolution']}"
    count = f"{summary['num_train_images']:,} " if summary.get("num_train_images") else ""
    if config.get("train_data_dir"):
        return f"a folder of {count}images at {size}.", None
    dataset = config.get("dataset_name")
    if dataset == BUILTIN_DATASET:
        return (f"scikit-learn's handwritten digits (1,797 8x8 grayscale images, UCI optdigits), upscaled to {size}.",
                None)
    if _is_local(dataset):
        return f"a local dataset of {count}images at {size}.", None
    return f"[`{dataset}`](https://huggingface.co/datasets/{dataset}) ({count}images) at {size}.", dataset


def _limitations(folder: Path, config: dict, data: str, class_names: list[str] | None) -> str:
    """What the model is for and what it cannot do, with this model's own measured figures."""
    kind = f"class-conditional over {len(class_names)} classes" if class_names else "unconditional"
    lines = [f"- For generating {config['resolution']}x{config['resolution']} images like its training data "
             f"({data.rstrip('.')}), {kind}; it knows nothing beyond that data, and takes no text prompt.",
             "- A small model trained briefly: judge its samples by the figures below before relying on them."]
    path = folder / "eval.json"
    if path.exists():
        result = json.loads(path.read_text())
        best = min(result["results"], key=lambda r: r["kid"])
        floor = result.get("real_vs_real", {})
        line = (f"- Measured ({result['num_samples']} samples, {result['features']} features): best KID "
                f"{best['kid']:.4f} at {best['steps']} steps")
        if floor:
            line += f", against {floor['kid']:.4f} between two halves of the real images"
        if "recognised" in best and "recognised" in floor:
            line += (f"; {best['recognised']:.0%} of the samples are recognised with confidence by a held-out "
                     f"classifier, against {floor['recognised']:.0%} of real held-out images")
        lines.append(line + ".")
    else:
        lines.append("- Not evaluated yet: `python -m denoising_diffusion.evaluate --model <this repo>` measures it.")
    return "\n".join(lines)


def render_model_card(folder: str | Path, repo_id: str | None = None, license: str | None = None):
    """A `huggingface_hub.ModelCard` for the trained pipeline in `folder` (not yet saved); `repo_id` is
    the full id of the repo it is for (its snippets load from there), else the folder."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    config = yaml.safe_load((folder / "training_config.yaml").read_text())
    summary_path = folder / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    unet = json.loads((folder / "unet" / "config.json").read_text())
    index = json.loads((folder / "model_index.json").read_text())
    names = index.get("class_names") or {}  # stored as {"0": name, ...}
    class_names = [names[key] for key in sorted(names, key=int)] or None
    data, hub_dataset = _dataset_description(config, summary)
    distilled_steps = config["distill_steps"][0] if config.get("teacher") and config.get("distill_steps") else None
    teacher = config.get("teacher") if distilled_steps else None
    card_data = ModelCardData(
        library_name="diffusers", license=license or config.get("hub_license", "apache-2.0"),
        pipeline_tag="unconditional-image-generation",
        tags=["diffusers", "ddim", "denoising-diffusion", "unconditional-image-generation", "pytorch"]
        + (["class-conditional"] if class_names else []),
        datasets=[hub_dataset] if hub_dataset else None,
        base_model=teacher if teacher and not _is_local(teacher) else None,
    )
    seconds = summary.get("training_seconds")
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    schedule = {**config, **(json.loads(scheduler_path.read_text()) if scheduler_path.exists() else {})}
    description = (f"A continuous-time DDIM (Denoising Diffusion Implicit Model) trained with "
                   f"[denoising-diffusion](https://pypi.org/project/denoising-diffusion/) on {data}")
    if distilled_steps:
        source = f"[`{teacher}`](https://huggingface.co/{teacher})" if not _is_local(teacher) else "a local pipeline"
        description += (f"\n\nA **student of progressive distillation** (Salimans & Ho 2022) for **{distilled_steps} "
                        f"DDIM step{'s' if distilled_steps > 1 else ''}**: it learned to do in one step what its teacher "
                        f"({source}) does in two. `pipe(...)` samples with {distilled_steps} steps by default "
                        "(the pipeline's `distilled_steps`); keep the stored DDIM scheduler and its `timestep_spacing`.")
    defaults = index.get("sampling_defaults") or {}
    steps = distilled_steps or (None if defaults.get("num_inference_steps") else 20)
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE),
        model_name=repo_id.split("/")[-1] if repo_id else folder.resolve().name, repo_id=repo_id or str(folder),
        description=description, distilled_steps=distilled_steps,
        usage_arguments=sampling_arguments(class_names, steps, sampling_defaults=defaults),
        usage_arguments_10=sampling_arguments(class_names, 10, sampling_defaults=defaults),
        sampling_table=_sampling_table(folder, class_names) if defaults else "",
        spacing_sentence=SPACING_SENTENCES[schedule.get("timestep_spacing", "log_snr")],
        guide=_guide_description(index.get("guide_info")),
        class_table="\n".join(f"| {i} | {name} |" for i, name in enumerate(class_names or [])),
        unlabelled_note=_unlabelled_note(defaults, class_names),
        limitations=_limitations(folder, config, data, class_names),
        conditioning=f", conditioned on {len(class_names)} classes" if class_names else "",
        grid_image="samples.png", grid_caption=f"{config.get('num_grid_images', 36)} images, "
                                               f"{distilled_steps or config.get('grid_inference_steps', 20)} DDIM "
                                               "steps, fixed noise",
        num_parameters=f"{summary.get('num_parameters', 0):,}" if summary else "unknown",
        widths="/".join(map(str, unet["block_out_channels"])) + _patch_note(unet.get("patch_size", 1))
        + (" with 2 position channels" if unet.get("position_channels") else "")
        + (f", {config['patch_fraction']:g} of the batches on crops (Patch Diffusion)" if config.get("patch_fraction") else ""),
        layers_per_block=unet["layers_per_block"],
        resolution=config["resolution"], channels=config["channels"], schedule=schedule["schedule"],
        min_signal_rate=schedule["min_signal_rate"], max_signal_rate=schedule["max_signal_rate"],
        prediction_type=config["prediction_type"], loss=config["loss"], loss_on=config["loss_on"],
        ema_decay=_ema_description(config, summary.get("global_step")), dataset_description=data,
        train_steps=summary.get("global_step", "unknown"), batch_size=config["train_batch_size"],
        learning_rate=config["learning_rate"], mixed_precision=config["mixed_precision"],
        training_time=f"{seconds / 60:.1f} minutes" if seconds else "unknown",
        hardware=summary.get("hardware", "unknown hardware"),
        training_config=yaml.safe_dump(_public_config(config), sort_keys=False).strip(),
        evaluation=_evaluation_markdown(folder),
    )


def _patch_note(patch_size: int) -> str:
    return f" on {patch_size}x{patch_size}-pixel patches" if patch_size > 1 else ""


SCHEDULER_NAMES = {"CosineDDIMScheduler": "DDIM", "CosineDPMSolverScheduler": "DPM-Solver++(2M)"}
SPACING_SENTENCES = {  # the model card's "which sampler" section, by the saved scheduler's spacing
    "log_snr": "The sampling times are uniform in log-SNR, log(alpha / sigma) (`timestep_spacing=\"log_snr\"`, the "
               "default; `\"time\"` is the Keras DDIM example's uniform spacing, `\"karras\"` Karras et al.'s).",
    "time": "The sampling times are uniform in t (`timestep_spacing=\"time\"`, saved with this model; `\"log_snr\"`, "
            "uniform in log(alpha / sigma), is the package's default, `\"karras\"` Karras et al.'s).",
    "karras": "The sampling times follow Karras et al.'s spacing (`timestep_spacing=\"karras\"`, saved with this "
              "model; `\"log_snr\"`, uniform in log(alpha / sigma), is the package's default, `\"time\"` uniform in t).",
}
SPACING_NAMES = {"time": "steps uniform in t", "karras": "Karras et al.'s step spacing"}  # the default, log_snr, goes unnamed


def _sampling_table(folder: Path, class_names: list[str] | None) -> str:
    """How the saved defaults sample, and what other budgets cost, in network evaluations per image."""
    from .pipelines.pipeline_cosine_ddim import CosineDDIMPipeline

    pipe = CosineDDIMPipeline.from_pretrained(folder)
    defaults = pipe.call_defaults()
    steps = pipe.inference_steps()
    solver = _solver_name(pipe.scheduler)
    guided = pipe.guide_unet is not None and defaults.get("autoguidance_scale", 1.0) != 1.0
    default = _call_description(pipe, solver, defaults, steps)
    if class_names and defaults.get("class_prior"):
        default += "; classes drawn from the training frequencies (`class_prior`)"
    if class_names and defaults.get("guidance_scale", 1.0) != 1.0:
        default += f"; with class labels, classifier-free guidance {defaults['guidance_scale']:g}{_band(defaults)}"
    count = lambda n, auto=None: pipe.network_evaluations(n, None, auto)  # noqa: E731 - as pipe(...) without labels
    rows = [("the defaults: `pipe(batch_size=4)`", default, count(steps))]
    if class_names:
        asked = pipe.call_defaults(class_labels_given=True)
        asked_steps = pipe.inference_steps(class_labels_given=True)
        rows.append((f"a class: `pipe(batch_size=4, class_labels=[{_example_class(class_names)}] * 4)`",
                     _call_description(pipe, _solver_name(pipe.sampling_scheduler(class_labels_given=True),
                                                          pipe.scheduler), asked, asked_steps, conditional=True),
                     pipe.network_evaluations(class_labels=True)))
    for n in sorted({max(1, steps // 2), 2 * steps}):
        rows.append((f"`num_inference_steps={n}`", f"{solver}, {n} steps" + (" (guidance as above)" if guided else ""),
                     count(n)))
    if guided:
        rows.append(("`autoguidance_scale=1.0`", f"{solver}, {steps} steps, no autoguidance", count(steps, 1.0)))
    lines = ["| call | samples with | network evaluations per image |", "| --- | --- | ---: |"]
    lines += [f"| {call} | {what} | {n} |" for call, what, n in rows]
    return "\n".join(lines)


def _solver_name(scheduler, saved=None) -> str:
    """"DPM-Solver++(2M) (steps uniform in t)": the sampler and its step spacing, unnamed when it is the default
    log-SNR, unless it differs from that of the `saved` scheduler (a call with its own `timestep_spacing`)."""
    solver = SCHEDULER_NAMES.get(type(scheduler).__name__, type(scheduler).__name__)
    spacing = scheduler.config.get("timestep_spacing", "log_snr")
    names = dict(SPACING_NAMES)
    if saved is not None and spacing != saved.config.get("timestep_spacing", "log_snr"):
        names["log_snr"] = "steps uniform in log-SNR"
    return solver + (f" ({names[spacing]})" if spacing in names else "")


def _call_description(pipe, solver: str, defaults: dict, steps: int, conditional: bool = False) -> str:
    """"DPM-Solver++(2M), 5 steps, autoguidance 2" for the stored defaults of one kind of call (with
    `conditional`, its classifier-free guidance too)."""
    text = f"{solver}, {steps} steps"
    if conditional and defaults.get("guidance_scale", 1.0) != 1.0:
        text += f", classifier-free guidance {defaults['guidance_scale']:g}{_band(defaults)}"
    if pipe.guide_unet is not None and defaults.get("autoguidance_scale", 1.0) != 1.0:
        text += f", autoguidance {defaults['autoguidance_scale']:g}{_band(defaults)}"
    return text


def _band(defaults: dict) -> str:
    """" at noise levels sigma in (0.4, 4]" for a stored guidance interval, else nothing."""
    interval = defaults.get("guidance_interval")
    return "" if not interval else (f" at noise levels sigma in ({interval[0]:g}, "
                                    f"{'inf' if interval[1] is None else format(interval[1], 'g')}]")


def _example_class(class_names: list[str]) -> int:
    """The class index a model card's examples ask for: the second class when there is one."""
    return 1 if len(class_names) > 1 else 0


def _unlabelled_note(defaults: dict, class_names: list[str] | None) -> str:
    """What a call without `class_labels` samples: classes drawn from the stored `class_prior`, or none."""
    if not class_names:
        return ""
    if defaults.get("class_prior"):
        return (f"without it, each image's class is drawn from the training images' class frequencies (the stored "
                f"`class_prior`), so the samples follow the data; `class_labels={len(class_names)}` (the \"no "
                "class\" label) gives the model's unconditional samples.")
    return "without it the samples are unconditional."


def _guide_description(info: dict | None) -> str:
    if not info:
        return ""
    if info.get("kind") == "ema_snapshot":
        return (f"\n- Autoguidance guide (`guide_unet`): the same network's EMA weights at step {info['step']} of "
                f"{info['of_steps']}, kept during training (Karras et al. 2024, \"Guiding a Diffusion Model with a "
                "Bad Version of Itself\").")
    return f"\n- Autoguidance guide (`guide_unet`): {info}."


def _ema_description(config: dict, steps: int | None) -> str:
    """The EMA as trained: EMAModel's decay is capped at `ema_decay`, but its warm-up may end below it."""
    if not config.get("use_ema"):
        return "none (no EMA)"
    power = config.get("ema_power")
    text = f"{config['ema_decay']}"
    if power is not None:
        text = (f"1 - (1 + s / {config.get('ema_inv_gamma', 1.0):g}) ^ -{power:g} at step s, capped at "
                f"{config['ema_decay']}")
    if steps:
        from diffusers.training_utils import EMAModel

        ema = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=config["ema_decay"],
                       min_decay=config.get("ema_min_decay", 0.0), use_ema_warmup=power is not None,
                       inv_gamma=config.get("ema_inv_gamma", 1.0), power=power or 2 / 3)
        last = ema.get_decay(steps)
        if power is not None:
            text += f"; {last:.4f} by the last step"
        elif last < config["ema_decay"]:
            text = f"capped at {config['ema_decay']}; EMAModel's warm-up reached {last:.4f} by the last step"
    return text


def write_model_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """Render the card for `folder` into `folder/README.md` and return its path."""
    path = Path(folder) / "README.md"
    render_model_card(folder, repo_id).save(str(path))
    return path


def _card_for_repo(folder: Path, repo_id: str) -> None:
    """The card of a trained folder, rendered for the repo it is pushed to (its full `owner/name`)."""
    if (folder / "training_config.yaml").exists():
        write_model_card(folder, repo_id)


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload trained CosineDDIMPipeline", run_as_future: bool = False):
    """Upload a trained pipeline folder (code, weights, card, samples; never checkpoints or logs). Its
    model card is first rendered again for the repo, once the Hub has said its full id (an id without
    owner gets the token's user), so the card's code loads from where it lands. See
    `pipeline_saving.push_folder`."""
    return upload_pipeline_folder(folder, repo_id, private=private, token=token, commit_message=commit_message,
                                  run_as_future=run_as_future, write_card=_card_for_repo)
