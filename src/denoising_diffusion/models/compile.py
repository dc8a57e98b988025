"""`torch.compile` for a UNet, in place.

`nn.Module.compile` keeps the module's class, attributes and parameter names (no `_orig_mod.` prefix),
so a compiled UNet still saves with `save_pretrained`, checkpoints and resumes like an eager one, and
sits in a pipeline unchanged:

    pipe.unet = compile_unet(pipe.unet)            # or: pipe.unet.compile()

The first call of each new input shape compiles (seconds to minutes); later calls run the compiled code.
"""

from typing import Optional

import torch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_options(backend: str, mode: Optional[str], error=ValueError, prefix: str = "") -> None:
    """Raise `error` naming the bad value when `backend` or `mode` is not one torch.compile accepts."""
    backends = torch.compiler.list_backends(exclude_tags=())
    if backend not in backends:
        raise error(f"{prefix}backend={backend!r} is not valid; expected one of {tuple(backends)}.")
    if mode is not None and mode not in COMPILE_MODES:
        raise error(f"{prefix}mode={mode!r} is not valid; expected one of {COMPILE_MODES} or unset.")


def compile_unet(unet: torch.nn.Module, backend: str = "inductor", mode: Optional[str] = None) -> torch.nn.Module:
    """Compile `unet`'s forward in place with `torch.compile(backend=..., mode=...)` and return it."""
    check_compile_options(backend, mode)
    unet.compile(backend=backend, mode=mode)
    return unet
