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

from .evaluation.report import markdown_table
from .pipelines.pipeline_saving import PUSH_IGNORE, PushError, retry_command
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


def render_model_card(folder: str | Path, repo_id: str | None = None, license: str = "apache-2.0"):
    """A `huggingface_hub.ModelCard` for the trained pipeline in `folder` (not yet saved)."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    config = yaml.safe_load((folder / "training_config.yaml").read_text())
    summary_path = folder / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    unet = json.loads((folder / "unet" / "config.json").read_text())
    dataset = config.get("train_data_dir") or config.get("dataset_name")
    is_hub_dataset = dataset and "/" in str(dataset) and not Path(str(dataset)).exists()
    if config.get("dataset_name") == "digits" and not config.get("train_data_dir"):
        dataset_description = ("scikit-learn's handwritten digits (1,797 8x8 grayscale images, UCI optdigits), "
                               f"upscaled to {config['resolution']}x{config['resolution']}.")
    else:
        dataset_description = f"`{dataset}` at {config['resolution']}x{config['resolution']}."
    card_data = ModelCardData(
        library_name="diffusers", pipeline_tag="unconditional-image-generation", license=license,
        tags=["diffusers", "ddim", "denoising-diffusion", "unconditional-image-generation", "pytorch"],
        datasets=[dataset] if is_hub_dataset else None,
    )
    seconds = summary.get("training_seconds")
    name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    schedule = {**config, **(json.loads(scheduler_path.read_text()) if scheduler_path.exists() else {})}
    distilled_steps = config["distill_steps"][0] if config.get("teacher") and config.get("distill_steps") else None
    description = (f"A continuous-time DDIM (Denoising Diffusion Implicit Model) trained with "
                   f"[denoising-diffusion](https://pypi.org/project/denoising-diffusion/) on {dataset_description}")
    if distilled_steps:
        description += (f"\n\nA **student of progressive distillation** (Salimans & Ho 2022) for **{distilled_steps} DDIM "
                        f"step{'s' if distilled_steps > 1 else ''}**: it learned to do in one step what its teacher "
                        f"(`{config['teacher']}`) does in two. `pipe(...)` samples with {distilled_steps} steps by default "
                        "(the pipeline's `distilled_steps`); keep the stored DDIM scheduler and its `timestep_spacing`.")
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE),
        model_name=name, repo_id=repo_id or str(folder),
        description=description, distilled_steps=distilled_steps, usage_steps=distilled_steps or 20,
        grid_image="samples.png", grid_caption=f"{config.get('num_grid_images', 36)} images, "
                                               f"{distilled_steps or config.get('grid_inference_steps', 20)} DDIM "
                                               "steps, fixed noise",
        num_parameters=f"{summary.get('num_parameters', 0):,}" if summary else "unknown",
        widths="/".join(map(str, unet["block_out_channels"])), layers_per_block=unet["layers_per_block"],
        resolution=config["resolution"], channels=config["channels"], schedule=schedule["schedule"],
        min_signal_rate=schedule["min_signal_rate"], max_signal_rate=schedule["max_signal_rate"],
        prediction_type=config["prediction_type"], loss=config["loss"], loss_on=config["loss_on"],
        ema_decay=_ema_description(config, summary.get("global_step")),
        dataset_description=dataset_description,
        train_steps=summary.get("global_step", "unknown"), batch_size=config["train_batch_size"],
        learning_rate=config["learning_rate"], mixed_precision=config["mixed_precision"],
        training_time=f"{seconds / 60:.1f} minutes" if seconds else "unknown",
        hardware=summary.get("hardware", "unknown hardware"),
        training_config=yaml.safe_dump(config, sort_keys=False).strip(),
        evaluation=_evaluation_markdown(folder),
    )


def _ema_description(config: dict, steps: int | None) -> str:
    """The EMA as trained: EMAModel's decay is capped at `ema_decay`, but its warm-up may end below it."""
    if not config.get("use_ema"):
        return "none (no EMA)"
    text = f"{config['ema_decay']}"
    if steps:
        from diffusers.training_utils import EMAModel

        ema = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=config["ema_decay"],
                       min_decay=config.get("ema_min_decay", 0.0))
        last = ema.get_decay(steps)
        if last < config["ema_decay"]:
            text = f"capped at {config['ema_decay']}; EMAModel's warm-up reached {last:.4f} by the last step"
    return text


def write_model_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """Render the card for `folder` into `folder/README.md` and return its path."""
    path = Path(folder) / "README.md"
    render_model_card(folder, repo_id).save(str(path))
    return path


def _card_if_missing(folder: Path, repo_id: str) -> None:
    if not (folder / "README.md").exists() and (folder / "training_config.yaml").exists():
        write_model_card(folder, repo_id)


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload trained CosineDDIMPipeline", run_as_future: bool = False):
    """Upload a trained pipeline folder (code, weights, card, samples; never checkpoints or logs),
    writing its model card first if it has none. See `pipeline_saving.push_folder`."""
    return upload_pipeline_folder(folder, repo_id, private=private, token=token, commit_message=commit_message,
                                  run_as_future=run_as_future, write_card=_card_if_missing)
