"""Data parallelism under torchrun: process group, sharding of the global batch, reductions.

A run started by `torchrun --nproc_per_node N -m hdlm train ...` (or `hdlm train --nproc N`)
finds RANK / WORLD_SIZE / LOCAL_RANK in its environment; `init` joins the process group (NCCL on
GPUs, gloo on CPU). Without them every helper here is the single-process identity, so the
trainer has one code path. `train.batch_size` is the global batch: rank r trains on the r-th
contiguous slice of exactly the batch a single process would draw at that step.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from hdlm.errors import ConfigError


def init(device: torch.device) -> torch.device:
    """Join the torchrun process group if there is one; return this rank's device."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the body first (it fills caches: tokenizer, tokenised data), then the rest."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(batch: Tensor) -> Tensor:
    """This rank's contiguous slice of a global batch (the sizes were checked to divide)."""
    return batch.tensor_split(world_size())[rank()]


def check_batch(batch_size: int) -> None:
    if batch_size % world_size():
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch and must split evenly over "
            f"{world_size()} processes; make it a multiple of {world_size()}"
        )


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Σ over ranks of each value (one collective; float64 so that sums of nats stay exact)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


class LossModule(nn.Module):
    """`objective.loss(net, tokens, generator)` as a module, so that DDP sees one forward call
    whatever backbone methods a family uses inside it (A3's two-stream pass)."""

    def __init__(self, net: nn.Module, objective):
        super().__init__()
        self.net, self.objective = net, objective

    def forward(self, tokens: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.objective.loss(self.net, tokens, generator)


def wrap(step: LossModule, parallel: str) -> nn.Module:
    """DDP around the loss, or FSDP2 (`fully_shard`) on each block and the backbone.

    Under FSDP a weight is whole only inside a forward method of the module it is sharded with:
    every pass runs the blocks through `Block.forward`, and the backbone's other entry point,
    A3's `two_stream`, is registered as a forward method, so its embeddings, final norm and head
    are gathered as in `forward`."""
    if not dist.is_initialized():
        return step
    if parallel == "ddp":
        device_ids = [step.net.embed.weight.device] if torch.cuda.is_available() else None
        return nn.parallel.DistributedDataParallel(step, device_ids=device_ids)
    for block in step.net.blocks:
        fully_shard(block)
    fully_shard(step.net)
    if hasattr(step.net, "two_stream"):
        register_fsdp_forward_method(step.net, "two_stream")
    return step


def no_sync(step: nn.Module, last_micro_step: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if isinstance(step, nn.parallel.DistributedDataParallel) and not last_micro_step:
        return step.no_sync()
    return contextlib.nullcontext()


def _full_options():
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(net: nn.Module) -> dict[str, Tensor]:
    """The whole state dict (gathered onto rank 0 under FSDP; other ranks get an empty one)."""
    if not dist.is_initialized():
        return net.state_dict()
    return get_model_state_dict(net, options=_full_options())


def load_model_state(net: nn.Module, weights: dict[str, Tensor], strict: bool = True) -> None:
    """Load whole weights (every rank passes them) into a plain, DDP or FSDP-sharded module."""
    if not dist.is_initialized():
        net.load_state_dict(weights, strict=strict)
        return
    options = StateDictOptions(full_state_dict=True, strict=strict)
    set_model_state_dict(net, weights, options=options)


def optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name, the same whatever the parallelism."""
    options = _full_options() if dist.is_initialized() else StateDictOptions()
    return get_optimizer_state_dict(net, optimizer, options=options)


def load_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    options = StateDictOptions(full_state_dict=dist.is_initialized())
    set_optimizer_state_dict(net, optimizer, state, options=options)


def full_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Whole tensors of a (possibly FSDP-sharded) state dict; a collective under FSDP."""
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


def launch(nproc: int, argv: list[str]) -> None:
    """Replace this process by `torchrun --standalone --nproc_per_node nproc -m hdlm train argv`
    (exec, so SIGTERM / SIGINT reach torchrun, which forwards them to every rank)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "hdlm", "train", *argv]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
