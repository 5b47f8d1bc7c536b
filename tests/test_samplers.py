import numpy as np
import pytest
from keras import ops

from kgen import random as kgen_random
from kgen import samplers

LOGITS = np.log(np.array([[0.5, 0.3, 0.15, 0.05],
                          [0.05, 0.15, 0.3, 0.5]], "float32"))
PAIRS = kgen_random.seed_pairs([3, 4])


def numpy(x):
    return ops.convert_to_numpy(x)


def kept(filtered):
    return numpy(filtered) > -1e8


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name, expected", [
    ("greedy", {"temperature": 1.0, "top_k": 1, "top_p": 1.0}),
    ("temperature", {"temperature": 0.7, "top_k": 0, "top_p": 1.0}),
    ("top_k", {"temperature": 0.7, "top_k": 3, "top_p": 1.0}),
    ("top_p", {"temperature": 0.7, "top_k": 0, "top_p": 0.8}),
])
def test_named_samplers_are_settings_of_one_computation(name, expected):
    sampler = samplers.get(name)
    assert samplers.get(sampler) is sampler
    assert sampler.settings(temperature=0.7, top_k=3, top_p=0.8) == expected


@pytest.mark.backend_agnostic
def test_unknown_sampler_and_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"sampler='beam': expected one of \('greedy'"):
        samplers.get("beam")
    with pytest.raises(ValueError, match=r"temperature=nan"):
        samplers.get("top_k").settings(temperature=float("nan"))
    with pytest.raises(ValueError, match=r"top_p=1.5"):
        samplers.get("top_p").settings(top_p=1.5)


def test_top_k_filter_keeps_the_k_largest():
    np.testing.assert_array_equal(
        kept(samplers.filter_top_k(LOGITS, np.array([2, 0], "int32"))),
        [[True, True, False, False], [True, True, True, True]])


def test_top_p_filter_keeps_the_smallest_set_reaching_p():
    # Row 0 needs 0.5 + 0.3 to reach 0.75; row 1 with p = 1 keeps all.
    np.testing.assert_array_equal(
        kept(samplers.filter_top_p(LOGITS, np.array([0.75, 1.0], "float32"))),
        [[True, True, False, False], [True, True, True, True]])
    # The most likely token alone reaches 0.45 (its mass is 0.5; p equal to
    # a mass would hang on the last bit of the softmax).
    np.testing.assert_array_equal(
        kept(samplers.filter_top_p(LOGITS, np.array([0.45, 0.45], "float32"))),
        [[True, False, False, False], [False, False, False, True]])


def test_next_token_rows_follow_their_own_settings():
    ones = np.ones(2, "float32")
    greedy = numpy(samplers.next_token(LOGITS, PAIRS, 0, ones, np.ones(2, "int32"), ones))
    np.testing.assert_array_equal(greedy, [0, 3])
    # A draw over many positions: top_k=2 never leaves the two largest.
    draws = np.stack([numpy(samplers.next_token(
        LOGITS, PAIRS, step, ones, np.full(2, 2, "int32"), ones)) for step in range(40)])
    assert set(draws[:, 0]) == {0, 1} and set(draws[:, 1]) == {2, 3}
    # A row's token depends on its own seed pair and settings alone.
    alone = numpy(samplers.next_token(LOGITS[1:], PAIRS[1:], 5, ones[:1],
                                      np.zeros(1, "int32"), ones[:1]))
    both = numpy(samplers.next_token(LOGITS, PAIRS, 5, ones, np.zeros(2, "int32"), ones))
    assert alone[0] == both[1]
