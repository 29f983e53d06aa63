"""The one option look-up: every unknown choice gets the same message and did-you-mean rule."""
from __future__ import annotations

import pytest

from jnet.errors import ConfigError
from jnet.models.heads import HEADS
from jnet.utils.options import choose, closest, unknown


def test_choose_returns_a_valid_value_and_accepts_a_registry_dict():
    assert choose("area", ("area", "nearest"), "data.downsample") == "area"
    assert choose("chain", HEADS, "model.head") == "chain"


def test_one_message_for_every_unknown_choice():
    names = ", ".join(HEADS)  # every registered head, in registry order
    with pytest.raises(ConfigError) as info:
        choose("papr", HEADS, "model.head")
    assert str(info.value) == f"model.head: unknown value 'papr'; expected one of {names}; did you mean 'paper'?"
    assert unknown("format", "xyz", ("msd", "png"), "layout") == "format: unknown layout 'xyz'; expected one of msd, png"


def test_closest_spelling_then_substring():
    assert closest("adamm", ("adam", "adamw", "sgd")) == "adam"
    assert closest("dice", ("weights", "dice_weight")) == "dice_weight"
    assert closest("qqq", ("adam", "sgd")) is None
