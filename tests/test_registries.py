"""One registration per concept: every objective has its trainer on the node, every row format named in the core
is implemented by the data layer, and the objective decides which data settings it refuses."""

from __future__ import annotations

import pytest

from sdk.objectives import OBJECTIVES, ROW_FORMATS, data_refusal


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_has_a_trainer_on_the_node(name):
    assert callable(OBJECTIVES[name].load_trainer())


def test_the_data_layer_implements_exactly_the_named_formats():
    from sdk.data.formats import FORMATS

    assert sorted(FORMATS) == sorted(ROW_FORMATS) and all(f.kind == ROW_FORMATS[name] for name, f in FORMATS.items())


def test_the_spec_accepts_exactly_the_registered_names():
    from typing import get_args

    from sdk.core.spec import ObjectiveSpec, RowFormatName

    union = get_args(ObjectiveSpec)[0]
    assert {m.model_fields["name"].default for m in get_args(union)} == set(OBJECTIVES)
    assert set(get_args(RowFormatName)) == {"auto", *ROW_FORMATS}


@pytest.mark.parametrize(("objective", "fmt", "packing", "refused"), [
    ("sft", "auto", True, None),
    ("sft", "alpaca", False, None),
    ("sft", "preference", False, ("data.format", "preference rows are preference pairs: set objective: dpo or orpo or "
                                                 "simpo")),
    ("dpo", "feedback", False, ("data.format", "feedback rows are binary-feedback rows (one answer with a true/false "
                                               "label): set objective: kto")),
    ("kto", "feedback", False, None),
    ("kto", "auto", True, ("data.packing", "packing is not available with objective kto")),
    ("dpo", "auto", False, None),
    ("dpo", "openai_preference", False, None),
    ("dpo", "auto", True, ("data.packing", "packing is not available with objective dpo")),
    ("dpo", "messages", False, ("data.format", "objective dpo trains on preference pairs (preference or "
                                               "openai_preference), not messages rows")),
    ("kto", "alpaca", False, ("data.format", "objective kto trains on binary-feedback rows (one answer with a "
                                             "true/false label) (feedback), not alpaca rows")),
    ("orpo", "preference", False, None),
    ("simpo", "openai_preference", False, None),
    ("grpo", "messages", False, None),
    ("grpo", "alpaca", False, None),
    ("grpo", "text", False, ("data.format", "objective grpo trains on examples (alpaca or sharegpt or messages or "
                                            "prompt_completion), not text rows")),
    ("grpo", "preference", False, ("data.format", "preference rows are preference pairs: set objective: dpo or orpo "
                                                  "or simpo")),
    ("grpo", "auto", True, ("data.packing", "packing is not available with objective grpo")),
])
def test_an_objective_refuses_the_data_it_cannot_train_on(objective, fmt, packing, refused):
    assert data_refusal(objective, fmt, packing=packing) == refused


def test_an_unknown_objective_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown objective 'ppo'; use one of sft, dpo, kto, orpo, simpo, grpo"):
        data_refusal("ppo", "auto", packing=False)


@pytest.mark.parametrize(("text", "expected"), [("fp32", "fp32"), ("float32", "fp32"), ("BF16", "bf16"),
                                                ("bfloat16", "bf16"), ("float16", "fp16"), ("auto", "auto")])
def test_one_precision_vocabulary_for_every_option(text, expected):
    from sdk.core.precision import parse_precision

    assert parse_precision(text, option="--dtype") == expected


def test_a_precision_option_names_itself_when_wrong():
    from sdk.core.precision import parse_precision

    with pytest.raises(ValueError, match=r"--dtype: 'fp8' is not one of fp32, bf16, fp16 \(or float32"):
        parse_precision("fp8", option="--dtype", allow_auto=False)


@pytest.mark.parametrize(("desirable", "undesirable", "weights"), [
    (50, 50, (1.0, 1.0)), (90, 10, (1.0, 9.0)), (10, 40, (4.0, 1.0)), (3, 0, (1.0, 1.0)), (0, 5, (1.0, 1.0))])
def test_kto_weights_balance_the_classes_as_the_paper_recommends(desirable, undesirable, weights):
    from launch.objectives.kto import kto_weights

    assert kto_weights(desirable, undesirable) == weights
    dw, uw = weights
    if desirable and undesirable:  # KTO paper Eq. 8 / trl: desirable_weight * n_d / (undesirable_weight * n_u) in [1, 4/3]
        assert 1 <= dw * desirable / (uw * undesirable) <= 4 / 3
