# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the model runs: the one place that decides. A CUDA GPU in bfloat16; with
``EQUI360_ENGINE_DEVICE=cpu``, the CPU in float32 (the tests run the real pipeline on tiny models that way;
with real weights it is far too slow to be useful)."""

from __future__ import annotations

import os

from .protocol_io import EngineError

DEVICE_ENV = "EQUI360_ENGINE_DEVICE"


def forced_cpu() -> bool:
    return os.environ.get(DEVICE_ENV) == "cpu"


def has_device() -> bool:
    """Whether the LTX backend can run here (``auto`` falls back to the draft otherwise)."""
    if forced_cpu():
        return True
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def device_and_dtype():
    """("cuda", bfloat16), or ("cpu", float32) when forced; raises ``no_cuda`` without a GPU."""
    import torch
    if forced_cpu():
        return "cpu", torch.float32
    if not torch.cuda.is_available():
        raise EngineError("no_cuda", "the LTX backend needs an NVIDIA GPU with CUDA, and none is visible to "
                                     "this Python: check the engine's torch build, or use the draft backend")
    return "cuda", torch.bfloat16
