"""Progressive distillation, round after round: each round a normal training run of `Trainer`
with a `DistillationObjective`, its teacher the previous round's student.

Round k trains in `output_dir/student-N-steps` with the previous round's student as teacher (round
1: `config.teacher`), and is saved as a normal pipeline that records its step count. This is the
only module that imports both the trainer and the distillation objective.
"""

import dataclasses
import json
from pathlib import Path

from ..pipelines.pipeline_cosine_ddim import CosineDDIMPipeline
from .callbacks import Callback
from .config import TrainingConfig
from .distillation import DistillationObjective, check_teacher, student_start
from .trainer import Trainer


def round_folder(config: TrainingConfig, steps: int) -> Path:
    return Path(config.output_dir) / f"student-{steps}-steps"


def finished(folder: Path, config: TrainingConfig) -> bool:
    """A round is finished when its pipeline and summary are saved (the last thing a run writes)."""
    summary = folder / "training_summary.json"
    if not (folder / "model_index.json").exists() or not summary.exists():
        return False
    return config.max_train_steps is None or json.loads(summary.read_text())["global_step"] >= config.max_train_steps


def distillation_trainer(config: TrainingConfig, callbacks: list[Callback] = (),
                         objective_class: type = DistillationObjective) -> Trainer:
    """The trainer of one round: `config.teacher` distilled into a student for `config.distill_steps[0]`
    steps that starts as the teacher and works in its standardised space."""
    teacher = CosineDDIMPipeline.from_pretrained(config.teacher)
    check_teacher(teacher, config)
    unet, scheduler = student_start(teacher, config.prediction_type)
    return Trainer(config, objective=objective_class(teacher, config.distill_steps[0]), callbacks=callbacks,
                   unet=unet, noise_scheduler=scheduler,
                   image_stats=(list(teacher.config.image_mean), list(teacher.config.image_std)))


def distill(config: TrainingConfig, callbacks: list[Callback] = (),
            objective_class: type = DistillationObjective) -> Path:
    """Run the rounds of `config.distill_steps` one after another; return the last student's folder.

    With `resume_from_checkpoint`, finished rounds are skipped and the first unfinished one resumes
    from its own checkpoints; `overwrite_output_dir` retrains every round. `callbacks` go to every
    round's trainer; `objective_class(teacher, steps)` makes each round's objective.
    """
    teacher = config.teacher
    folder = None
    for steps in config.distill_steps:
        folder = round_folder(config, steps)
        if config.resume_from_checkpoint and not config.overwrite_output_dir and finished(folder, config):
            print(f"Round for {steps} steps already finished in {folder}; its student is the next teacher.")
            teacher = str(folder)
            continue
        round_config = dataclasses.replace(config, teacher=teacher, distill_steps=[steps], output_dir=str(folder))
        if round_config.resume_from_checkpoint and not folder.is_dir():
            round_config.resume_from_checkpoint = None  # a round not started yet starts anew
        distillation_trainer(round_config, callbacks, objective_class).train()
        teacher = str(folder)
    return folder
