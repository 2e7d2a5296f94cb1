"""SamplingParams refuses values the sampler cannot use, with one line naming the field, value and range."""

from __future__ import annotations

import math

import pytest

from medvllm.errors import RequestError
from medvllm.sampling_params import SamplingParams

FLOAT_FIELDS = ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"]
NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_non_finite_floats_are_refused_naming_field_value_and_range(name, value):
    with pytest.raises(RequestError) as err:
        SamplingParams(**{name: value})
    message = str(err.value)
    assert "\n" not in message
    assert f"{name}={value!r}" in message
    assert "finite" in message


@pytest.mark.parametrize(
    "name, value, range_text",
    [
        ("temperature", -0.1, ">= 0"),
        ("top_p", 0.0, "(0, 1]"),
        ("top_p", 1.5, "(0, 1]"),
        ("min_p", -0.01, "[0, 1]"),
        ("min_p", 1.01, "[0, 1]"),
        ("repetition_penalty", 0.0, "> 0"),
        ("presence_penalty", 2.5, "[-2, 2]"),
        ("frequency_penalty", -2.5, "[-2, 2]"),
    ],
)
def test_out_of_range_floats_are_refused(name, value, range_text):
    with pytest.raises(RequestError, match=rf"^{name}={value!r} is invalid: .*{range_text.replace('(', '[(]')}"):
        SamplingParams(**{name: value})


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": "0.5"}, "temperature"),
        ({"top_p": None}, "top_p"),
        ({"temperature": True}, "temperature"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"max_tokens": 3.0}, "max_tokens"),
        ({"logprobs": "2"}, "logprobs"),
        ({"seed": 1.5}, "seed"),
        ({"stop_token_ids": [1, "2"]}, "stop_token_ids"),
        ({"stop_token_ids": 3}, "stop_token_ids"),
        ({"stop": [1]}, "stop"),
        ({"stop": 5}, "stop"),
    ],
)
def test_wrong_types_are_a_request_error_not_a_crash(kwargs, name):
    with pytest.raises(RequestError, match=rf"^{name}="):
        SamplingParams(**kwargs)


def test_valid_values_still_pass_and_ints_are_accepted_for_floats():
    p = SamplingParams(temperature=0, top_p=1, min_p=1, repetition_penalty=2, presence_penalty=-2, frequency_penalty=2)
    assert p.greedy and p.has_penalties
    SamplingParams(temperature=5.0, top_p=0.01, top_k=1, seed=0, max_tokens=1, logprobs=0, stop_token_ids=[0])


def test_tiny_positive_temperature_is_raised_to_a_floor_that_cannot_overflow():
    # logits / 1e-40 overflow float32 to inf and the softmax to NaN; vLLM raises such values to 0.01
    with pytest.warns(UserWarning, match="temperature=1e-40 is below 0.01"):
        assert SamplingParams(temperature=1e-40).temperature == pytest.approx(0.01)
    assert SamplingParams(temperature=0.5).temperature == 0.5
