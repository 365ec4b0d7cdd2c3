"""Precision and dtypes: the one place that turns `train.precision`, `model.dtype` and a method into dtypes.

Used by the node (load, train), the planner (bytes per value) and merge. Every function takes the
facts as arguments and returns dtype *names* ("bfloat16"), so the client can use it without torch;
`torch_dtype()` turns a name into the torch object on the node.

    precision  the autocast mode of training: bf16 | fp16 (with loss scaling) | fp32
    weights    dtype the base model loads in (full fine-tuning keeps fp32 master weights)
    compute    dtype a 4-bit (QLoRA) base dequantizes to for its matmuls
    trainable  dtype of the trained parameters: adapters always fp32 (see trainable_dtype)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from sdk.core.spec import FineTuneSpec

Precision = Literal["bf16", "fp16", "fp32"]
DtypeName = Literal["float32", "bfloat16", "float16"]

DTYPE_OF: dict[str, DtypeName] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISION_OF: dict[str, Precision] = {v: k for k, v in DTYPE_OF.items()}  # type: ignore[misc]
BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
# The one vocabulary of options that take a precision (merge --dtype, generate --dtype, ...): the short names,
# with torch's names accepted as the same thing.
NAMES: dict[str, Precision] = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", **PRECISION_OF}


def parse_precision(text: str, *, option: str, allow_auto: bool = True) -> str:
    """`text` as a precision (fp32, bf16 or fp16; torch's float32, bfloat16, float16 too), or `auto` where the
    option has one; ValueError naming the option otherwise."""
    name = text.strip().lower()
    if allow_auto and name == "auto":
        return "auto"
    if name not in NAMES:
        choices = ", ".join((["auto"] if allow_auto else []) + list(DTYPE_OF))
        raise ValueError(f"{option}: {text!r} is not one of {choices} (or float32, bfloat16, float16)")
    return NAMES[name]
# bf16 arithmetic is native from Ampere (compute capability 8.0: A100, A10G, L4, H100) on.
BF16_MIN_CAPABILITY = (8, 0)


def resolve_precision(requested: str, *, capability: tuple[int, int] | None) -> Precision:
    """`auto` becomes bf16 on GPUs that have it natively, fp16 (with loss scaling) on older GPUs such as
    T4 and V100, and fp32 on CPU (`capability` None). An explicit choice is kept."""
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if capability is None:
        return "fp32"
    return "bf16" if tuple(capability) >= BF16_MIN_CAPABILITY else "fp16"


def uses_tf32(*, capability: tuple[int, int] | None) -> bool:
    """TF32 matmuls for the fp32 parts of training exist from Ampere on."""
    return capability is not None and tuple(capability) >= BF16_MIN_CAPABILITY


def weight_dtype(spec: FineTuneSpec, precision: Precision) -> DtypeName:
    """dtype the base weights load in. Methods that train every weight keep fp32 master weights (16-bit
    autocast on top); pure 16-bit weights would also keep Adam's states in 16 bits."""
    from sdk.core.methods import method_of

    if spec.model.dtype != "auto":
        return spec.model.dtype  # type: ignore[return-value]
    if method_of(spec).trains_all_weights:
        return "float32"
    return DTYPE_OF[precision]


def compute_dtype(spec: FineTuneSpec, precision: Precision) -> DtypeName:
    """dtype a quantized base computes in: the method's own setting, else the training precision's."""
    declared = getattr(spec.method, "compute_dtype", "auto")
    return declared if declared != "auto" else DTYPE_OF[precision]


def trainable_dtype(spec: FineTuneSpec, precision: Precision) -> DtypeName:
    """dtype of the trained parameters. Adapters (and a trained head) stay fp32 at every precision,
    QLoRA included, although trl casts QLoRA adapters to bf16: an Adam step moves a weight by about
    the learning rate (5e-6 in llama8b-dpo), and bf16's 8-bit mantissa rounds away any step below
    ~1/256 of the weight (4e-5 for a LoRA weight of 0.01). fp32 costs 4 more bytes per trainable
    parameter (plus its gradient): ~170 MB for Llama-3.1-8B at r=16 all-linear."""
    from sdk.core.methods import method_of

    if method_of(spec).trains_all_weights:
        return weight_dtype(spec, precision)
    return "float32"


def torch_dtype(name: str) -> Any:
    """The torch dtype for a name ('bfloat16' or a precision such as 'bf16'). Node side only."""
    import torch

    return getattr(torch, DTYPE_OF.get(name, name))


def dtype_name(dtype: Any) -> DtypeName:
    """'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")  # type: ignore[return-value]
