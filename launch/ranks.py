"""Where this process is in a (possibly) distributed run, from the variables torchrun sets.

Only global rank 0 writes to the store; local rank 0 of each node moves checkpoint files, because
the ranks of one node share a scratch folder and the nodes do not.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def node_rank() -> int:
    return int(os.environ.get("GROUP_RANK", os.environ.get("SKYPILOT_NODE_RANK", "0")))


def num_nodes() -> int:
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(world_size() // max(local, 1), 1)


def is_main() -> bool:
    return rank() == 0


def init(distributed: Any) -> None:
    """Join the process group early (before the Trainer), so the node can synchronise its own steps:
    checkpoint download on resume, cancellation. The Trainer and DeepSpeed reuse this group, so it carries
    CPU tensors too where FSDP offloads them (launch.gpu.process_group_backend). `distributed`: the spec's section."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    from launch.gpu import process_group_backend

    if not dist.is_initialized():
        backend = process_group_backend(cuda=torch.cuda.is_available(),
                                        cpu_collectives=distributed.strategy == "fsdp" and distributed.offload)
        if backend != "gloo":
            torch.cuda.set_device(local_rank())
        # Long enough for a checkpoint upload on one rank while the others wait (NCCL's watchdog).
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=distributed.timeout_minutes))


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when any rank says True (e.g. cancel: all ranks must stop at the same step)."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value on every rank."""
    if world_size() == 1:
        return obj
    import torch.distributed as dist

    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
