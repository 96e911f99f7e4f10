"""Device and precision choice, by measurement rather than assumption.

CPUs differ wildly in bf16 speed (from ~300x slower than fp32 to ~6x faster with AMX), so
`precision: auto` times a matmul in each candidate precision on this machine and keeps the faster.
The same measurement is the peak that MFU is reported against.
"""

from __future__ import annotations

import contextlib
import time
from functools import cache

import torch

from hdlm.errors import ConfigError, HdlmError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str = "auto", option: str = "train.device") -> torch.device:
    """The device `name` asks for (auto: a GPU when one is visible), refused with a one-line
    error naming `option` when it is not a device or does not exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{option}={name!r} is not a device (use auto, cpu or cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option}={name} but no CUDA GPU is visible; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{option}={name} but this machine has {torch.cuda.device_count()} "
                          "GPU(s); use cuda:0 or another index")  # fmt: skip
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{option}={name}: hdlm runs on cpu or cuda")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device):
    """The clock that times work on `device`: wall time, except single-threaded CPU work, timed
    by this process' CPU time so that on a shared machine the time the OS gives other jobs is
    left out (on an idle machine the two agree)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time
    return time.perf_counter


@cache
def matmul_flops(precision: str, device_type: str, size: int = 1024, seconds: float = 0.3) -> float:
    """Measured throughput (FLOP/s) of size x size x size matmuls in one precision."""
    device = torch.device(device_type)
    a = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    b = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    for _ in range(3):  # warm-up: thread pools, kernel selection
        a @ b
    synchronize(device)
    now = clock(device)
    runs, start = 0, now()
    while runs < 2 or now() - start < seconds:
        a @ b
        synchronize(device)
        runs += 1
    return 2 * size**3 * runs / (now() - start)


def pick_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on GPUs that support it; on CPU whichever of fp32/bf16 measures faster."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("train.precision=fp16 needs a GPU; use auto, fp32 or bf16 on CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    fp32, bf16 = matmul_flops("fp32", "cpu", 512, 0.1), matmul_flops("bf16", "cpu", 512, 0.1)
    return "bf16" if bf16 > 1.2 * fp32 else "fp32"


def compile_network(net: torch.nn.Module, warn=print) -> None:
    """`torch.compile` the forward of `net` in place (weights and state_dict keys unchanged).

    Compilation happens at the first call of each new input shape; if it fails (no C++
    compiler, an unsupported op or platform), one line is printed with `warn` and `net` runs
    eagerly from then on, so `train.compile: true` never stops a run.
    """
    eager = net.forward
    compiled = torch.compile(eager)

    def forward(*args, **kwargs):
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(*args, **kwargs)
            except HdlmError:
                raise
            except Exception as e:  # any compiler failure: run eagerly
                reason = (str(e).strip().splitlines() or [""])[0][:120]
                warn(f"warning: torch.compile failed ({type(e).__name__}: {reason}); running eager")
                compiled = None
        return eager(*args, **kwargs)

    net.forward = forward


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
