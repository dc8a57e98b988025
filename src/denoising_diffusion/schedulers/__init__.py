from .noise_schedule import SCHEDULES, signal_noise_rates
from .scheduling_cosine_ddim import CosineDDIMScheduler
from .scheduling_cosine_dpmsolver import CosineDPMSolverScheduler

__all__ = ["SCHEDULES", "CosineDDIMScheduler", "CosineDPMSolverScheduler", "signal_noise_rates"]
