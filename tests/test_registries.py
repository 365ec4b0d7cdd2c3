"""One registration per concept: every objective has its trainer on the node, every row format named in the core
is implemented by the data layer, and the objective decides which data settings it refuses."""

from __future__ import annotations

import pytest

from sdk.core.objectives import OBJECTIVES, ROW_FORMATS, data_refusal


def test_every_objective_has_a_trainer_on_the_node():
    from launch.train import TRAINERS

    assert sorted(TRAINERS) == sorted(OBJECTIVES)


def test_the_data_layer_implements_exactly_the_named_formats():
    from sdk.data.formats import FORMATS

    assert {name: "preference" if f.preference else "examples" for name, f in FORMATS.items()} == ROW_FORMATS


def test_the_spec_accepts_exactly_the_registered_names():
    from typing import get_args

    from sdk.core.spec import ObjectiveName, RowFormatName

    assert set(get_args(ObjectiveName)) == set(OBJECTIVES)
    assert set(get_args(RowFormatName)) == {"auto", *ROW_FORMATS}


@pytest.mark.parametrize(("objective", "fmt", "packing", "refused"), [
    ("sft", "auto", True, None),
    ("sft", "alpaca", False, None),
    ("sft", "preference", False, ("data.format", "preference rows are preference pairs: set objective: dpo")),
    ("dpo", "auto", False, None),
    ("dpo", "openai_preference", False, None),
    ("dpo", "auto", True, ("data.packing", "packing is not available with objective dpo")),
    ("dpo", "messages", False, ("data.format", "dpo trains on preference pairs (preference or openai_preference), not messages rows")),
])
def test_an_objective_refuses_the_data_it_cannot_train_on(objective, fmt, packing, refused):
    assert data_refusal(objective, fmt, packing=packing) == refused


def test_an_unknown_objective_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown objective 'kto'; use one of sft, dpo"):
        data_refusal("kto", "auto", packing=False)


@pytest.mark.parametrize(("text", "expected"), [("fp32", "fp32"), ("float32", "fp32"), ("BF16", "bf16"),
                                                ("bfloat16", "bf16"), ("float16", "fp16"), ("auto", "auto")])
def test_one_precision_vocabulary_for_every_option(text, expected):
    from sdk.core.precision import parse_precision

    assert parse_precision(text, option="--dtype") == expected


def test_a_precision_option_names_itself_when_wrong():
    from sdk.core.precision import parse_precision

    with pytest.raises(ValueError, match=r"--dtype: 'fp8' is not one of fp32, bf16, fp16 \(or float32"):
        parse_precision("fp8", option="--dtype", allow_auto=False)
