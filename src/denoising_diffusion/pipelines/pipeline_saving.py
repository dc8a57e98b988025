"""Saved pipeline folders that carry their own code, and uploading them to the Hub.

`SavesCodeMixin` gives a `DiffusionPipeline` subclass two things:

* `save_pretrained` also writes the code of every component that is not from diffusers into its
  subfolder (`unet/unet_continuous.py`, ...) and the pipeline's module into the root, and
  `model_index.json` names them, the way diffusers' Hub custom pipelines and components work, so
  `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` works without this package.
  With `push_to_hub=True` the folder is then uploaded by `push_folder`.
* `from_pretrained` (diffusers' own loader) of the installed class reads such a folder with the
  installed classes instead, so none of the stored code runs.

`push_folder` is the one upload of a pipeline folder: it creates the repo, leaves checkpoints and
logs out, and on failure keeps every local file and says how to retry.

This module travels with saved pipelines, so it imports only the standard library, diffusers and
huggingface_hub.
"""

import importlib
import inspect
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable

from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES

_RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)(\.+)([\w.]*)(\s+import\b)", flags=re.MULTILINE)
# What a push leaves out: resumable training state and logs (the pipeline, card and samples go).
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", ".checkpoint-*", ".checkpoint-*/**", "logs/**", "*.partial"]
HUB_ARGUMENTS = ("repo_id", "commit_message", "private", "create_pr", "token")


class PushError(RuntimeError):
    """A push to the Hub failed; the message says how to retry. Local files are untouched."""


def retry_command(folder: str | Path, repo_id: str, private: bool | None) -> str:
    return (f"python -m denoising_diffusion.hub push {folder} --repo_id {repo_id}"
            + (" --private" if private else ""))


TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)  # the Hub is busy or away for a moment: try again


def transient(error: BaseException) -> bool:
    """A Hub error worth retrying: a busy or failing server, a timeout, a dropped connection."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None:
        return status in TRANSIENT_STATUS
    return isinstance(error, (ConnectionError, TimeoutError)) or any(
        word in type(error).__name__ for word in ("Connect", "Timeout", "RemoteProtocol", "ReadError"))


def with_retries(call, *args, attempts: int = 4, delay: float = 1.0, **kwargs):
    """`call(*args, **kwargs)`, tried again after 1, 2, 4 ... seconds on a transient error."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - only transient ones are retried
            if attempt == attempts - 1 or not transient(error):
                raise
            time.sleep(delay * 2**attempt)


def sampling_arguments(class_names: list[str] | None, num_inference_steps: int | None = None, batch: int = 4,
                       sampling_defaults: dict | None = None) -> str:
    """The arguments of a model card's sampling snippet: a batch, the class names in turn for a
    class-conditional model (with `guidance_scale=2` unless the pipeline's `sampling_defaults` store a
    weight for calls given class labels, which the call then uses), and the step count when given."""
    arguments = f"batch_size={batch}"
    if class_names:
        arguments += f", class_labels={[class_names[i % len(class_names)] for i in range(batch)]!r}"
        defaults = sampling_defaults or {}
        stored = (defaults.get("with_class_labels") or {}).get("guidance_scale", defaults.get("guidance_scale"))
        arguments += "" if stored else ", guidance_scale=2"
    return arguments + (f", num_inference_steps={num_inference_steps}" if num_inference_steps else "")


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload trained CosineDDIMPipeline", run_as_future: bool = False,
                create_pr: bool = False, write_card: Callable[[Path, str], object] | None = None):
    """Create `repo_id` if needed and upload the pipeline folder (code, weights, card, samples).

    Checkpoints and logs stay local (`PUSH_IGNORE`). Transient Hub errors (a busy server, a dropped
    connection) are retried with backoff (`with_retries`). `write_card(folder, repo_id)`, when given, runs
    once the repo exists (its full id known). Returns the commit info (or a Future with
    `run_as_future`). On failure nothing local is touched and the `PushError` says how to retry.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"{folder} holds no saved pipeline (model_index.json is missing).")
    api = HfApi(token=token)
    try:
        repo_id = with_retries(api.create_repo, repo_id, private=private, exist_ok=True).repo_id
        if write_card is not None:
            write_card(folder, repo_id)
        upload = {"repo_id": repo_id, "folder_path": str(folder), "commit_message": commit_message,
                  "ignore_patterns": PUSH_IGNORE, "create_pr": create_pr}
        if run_as_future:  # retried in the background too
            return api.run_as_future(with_retries, api.upload_folder, **upload)
        return with_retries(api.upload_folder, **upload)
    except Exception as error:  # noqa: BLE001 - any failure: keep files, explain the retry
        raise PushError(
            f"Pushing {folder} to {repo_id} failed ({type(error).__name__}: {error}). Every local file is kept; "
            f"retry with: {retry_command(folder, repo_id, private)}"
        ) from error


def bundle_module(module_file: Path, target_dir: Path) -> str:
    """Copy `module_file` and the files it imports relatively into `target_dir`, flattened.

    `from ..schedulers.noise_schedule import x` becomes `from .noise_schedule import x`, the form
    diffusers' dynamic-module loader resolves inside one folder. Returns the module's stem.
    """
    pending, done = [module_file.resolve()], set()
    while pending:
        source = pending.pop()
        if source in done:
            continue
        done.add(source)
        text = source.read_text(encoding="utf-8")

        def flatten(match, source=source):
            dots, dotted = match.group(2), match.group(3)
            base = source.parent
            for _ in range(len(dots) - 1):
                base = base.parent
            pending.append(base.joinpath(*dotted.split(".")).with_suffix(".py"))
            return f"{match.group(1)}.{dotted.split('.')[-1]}{match.group(4)}"

        (target_dir / source.name).write_text(_RELATIVE_IMPORT.sub(flatten, text), encoding="utf-8")
    return module_file.stem


def _write_code(pipeline, root: Path) -> None:
    """Bundle the code of `pipeline` and its non-diffusers components into the saved folder `root`
    and name those modules in its `model_index.json`."""
    index_path = root / "model_index.json"
    index = json.loads(index_path.read_text())
    for name, component in pipeline.components.items():
        module = inspect.getmodule(type(component))
        if component is None or module is None or module.__name__.split(".")[0] in LOADABLE_CLASSES:
            continue
        stem = bundle_module(Path(inspect.getsourcefile(type(component))), root / name)
        index[name] = [stem, type(component).__name__]
    stem = bundle_module(Path(inspect.getsourcefile(type(pipeline))), root)
    index["_class_name"] = [stem, type(pipeline).__name__]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


class SavesCodeMixin:
    """For a `DiffusionPipeline` subclass (listed before it): saved folders carry the code, and the
    installed classes load them (see the module docstring)."""

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`DiffusionPipeline.save_pretrained`, plus the code of every component not from diffusers;
        `push_to_hub=True` (with `repo_id`, `commit_message`, `private`, `create_pr`, `token`) then
        uploads the folder through `push_folder`."""
        push_to_hub = kwargs.pop("push_to_hub", False)
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_ARGUMENTS if k in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        root = Path(save_directory)
        _write_code(self, root)
        if push_to_hub:
            push_folder(root, hub_kwargs.get("repo_id") or root.resolve().name, private=hub_kwargs.get("private"),
                        token=hub_kwargs.get("token"), create_pr=hub_kwargs.get("create_pr", False),
                        commit_message=hub_kwargs.get("commit_message") or "Upload pipeline")

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, safe_serialization: bool = True,
                    variant: str | None = None):
        """Save the pipeline (with its code) and upload it to `repo_id` through `push_folder`, with a
        model card whose code loads it from there (the repo's full `owner/name`)."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
            return push_folder(folder, repo_id, private=private, token=token, create_pr=create_pr,
                               commit_message=commit_message or "Upload pipeline", write_card=self._write_usage_card)

    def _write_usage_card(self, folder: Path, repo_id: str) -> None:
        """A short model card for a pipeline pushed on its own: how to load and sample it."""
        arguments = sampling_arguments(getattr(self, "class_names", None),
                                       sampling_defaults=self.config.get("sampling_defaults"))
        code = (f"import torch\nfrom denoising_diffusion import {type(self).__name__}\n\n"
                f"pipe = {type(self).__name__}.from_pretrained({repo_id!r})\n"
                f"images = pipe({arguments}, generator=torch.Generator().manual_seed(0)).images\n"
                "images[0].save(\"sample.png\")")
        text = (f"---\nlibrary_name: diffusers\npipeline_tag: unconditional-image-generation\ntags:\n- diffusers\n"
                f"- ddim\n- denoising-diffusion\n---\n\n# {repo_id.split('/')[-1]}\n\nA continuous-time DDIM "
                f"pipeline.\n\n```bash\npip install denoising-diffusion\n```\n\n```python\n{code}\n```\n\n"
                f"Without the package: `DiffusionPipeline.from_pretrained({repo_id!r}, trust_remote_code=True)`.\n")
        (Path(folder) / "README.md").write_text(text, encoding="utf-8")

    # `from_pretrained` is `DiffusionPipeline.from_pretrained`. A saved folder names its components by
    # the module files it carries (for plain diffusers with `trust_remote_code=True`); when the
    # installed class loads it, these two hooks point diffusers' loader at the installed classes.
    @classmethod
    def _installed_library(cls, class_name) -> str | None:
        """The installed package that defines `class_name` (e.g. "denoising_diffusion"), or None."""
        package = importlib.import_module(cls.__module__.split(".")[0])
        return package.__name__ if isinstance(getattr(package, str(class_name), None), type) else None

    @classmethod
    def _dict_from_json_file(cls, json_file):
        # Read by `download` (repo ids) and `load_config`: the pipeline class is this one, not stored code.
        config = super()._dict_from_json_file(json_file)
        name = config.get("_class_name")
        if isinstance(name, (list, tuple)) and len(name) == 2 and cls._installed_library(name[1]):
            config["_class_name"] = name[1]
        return config

    @classmethod
    def load_config(cls, *args, **kwargs):
        # Components: ["unet_continuous", "ContinuousUNet2DModel"] -> ["denoising_diffusion", "ContinuousUNet2DModel"].
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        for name, value in config.items():
            if not name.startswith("_") and isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], str):
                library = cls._installed_library(value[1])
                if library is not None:
                    config[name] = [library, value[1]]
        return loaded
