"""What a run ran on, in words and as a record: CPU model and cores, GPU, torch and Python versions."""

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """E.g. 'Intel(R) Xeon(R) CPU @ 2.20GHz' (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products in hardware (AVX512-BF16 or AMX): there, bf16
    autocast trains about 1.7x faster than fp32 (2-core AMD EPYC, docs/benchmarks.md); elsewhere it is
    emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's probes (torch >= 2.1)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def machine_info() -> dict:
    """The machine as a JSON-ready record (CPU, cores, torch, GPU or None, Python)."""
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(), "cpu_bf16": cpu_has_native_bf16(),
    }


def describe_device(device: torch.device, num_processes: int = 1, precision: str = "fp32") -> str:
    """E.g. 'NVIDIA H100 80GB HBM3 x 8 processes, bf16' or 'Intel(R) Xeon(R) ... (2 cores), fp32'."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()} ({os.cpu_count()} cores)"
    processes = f" x {num_processes} processes" if num_processes > 1 else ""
    return f"{name}{processes}, {precision}"
