from .noise_schedule import SCHEDULES, signal_noise_rates
from .scheduling_cosine_ddim import CosineDDIMScheduler

__all__ = ["SCHEDULES", "CosineDDIMScheduler", "signal_noise_rates"]
