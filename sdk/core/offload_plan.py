"""What a GPU holds when FSDP2 offloads parameters to the CPU (distributed: {strategy: fsdp, offload: true}).

FSDP2's CPUOffloadPolicy keeps every rank's parameter shards, their gradients and the optimizer states in CPU
memory, and the optimizer steps there. A GPU holds only the units being computed, all-gathered whole in the compute
dtype (the mixed-precision policy): accelerate wraps each decoder layer, the input embedding, and a tail of the
final norm and the output head kept gathered between forward and backward. At the turn from forward to backward
that is the head, the last layer and the one prefetched before it — the most the GPU holds at once — and the
gradients of the trained weights among them, before they are reduce-scattered and copied out. Activations and
logits are the GPU's as without offload (sdk.core.plan adds them).
"""

from __future__ import annotations

from sdk.core.architectures import Shapes

Part = tuple[str, int, str]  # (component name, bytes, note), as sdk.core.objective_plan's


def offloaded_parts(shapes: Shapes, *, total: int, trainable: int, act: int, host_bytes: int, world: int,
                    adapter: bool) -> list[Part]:
    """Per-GPU weights, gradients and optimizer under FSDP CPU offload. `act`: bytes per compute value;
    `host_bytes`: what the run would hold per rank without offload (weights, trained params, gradients, optimizer),
    now in CPU memory; `adapter`: the trained parameters are added ones (LoRA), spread over the layers."""
    embed = shapes.vocab * shapes.h
    layer = (total - embed * (1 if shapes.tied else 2) - shapes.h) // shapes.layers
    held = embed + 2 * layer  # the head, the layer computing and the next one prefetched
    # An adapter's trained parameters sit in the layers (their share in the two held), a full fine-tune's are all.
    trained = 2 * trainable // shapes.layers if adapter else held
    gib = host_bytes / 2**30
    return [("weights (FSDP offload)", (held + (trained if adapter else 0)) * act,
             f"head + 2 layers gathered at {act} B; {total:,} params sharded {world} way(s) in CPU memory "
             f"(≈{gib:.1f} GiB of host memory per rank with gradients and optimizer)"),
            ("gradients", trained * act, "the held units' before reduce-scatter; the shards in CPU memory"),
            ("optimizer", 0, "in CPU memory: the step runs on the CPU")]
