"""config: the one preset idiom (PRESETS + get_config(name, **overrides))."""

from __future__ import annotations

import dataclasses

import pytest

from stylerig_lite import stylegan2, train_f, train_rignet
from stylerig_lite.config import config_from_preset


@dataclasses.dataclass
class Toy:
    a: int = 1
    b: str = "x"
    c: object = None


def test_presets_are_dicts_or_configs_and_overrides_win():
    presets = {"small": {"a": 2}, "whole": Toy(a=5, b="y")}
    assert config_from_preset(Toy, presets, "small", {"b": "z"}) == Toy(a=2, b="z")
    assert config_from_preset(Toy, presets, "small", {"a": None}) == Toy(a=2)  # an option not given
    assert config_from_preset(Toy, presets, "whole", {"a": 6}) == Toy(a=6, b="y")
    assert config_from_preset(Toy, presets, "whole", {"c": None}, drop_none=False) == Toy(a=5, b="y", c=None)
    assert presets["whole"] == Toy(a=5, b="y")  # the preset itself is never modified


def test_unknown_presets_and_options_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'big'; expected one of \['small'\]"):
        config_from_preset(Toy, {"small": {}}, "big", {})
    with pytest.raises(ValueError, match=r"unknown options \['d'\]"):
        config_from_preset(Toy, {"small": {}}, "small", {"d": 1})


def test_every_configurable_module_uses_the_idiom():
    for module, name in ((stylegan2, "tiny"), (train_f, "tiny"), (train_rignet, "tiny")):
        assert name in module.PRESETS
        assert dataclasses.is_dataclass(module.get_config(name))
    assert train_f.make_config is train_f.get_config and train_rignet.make_config is train_rignet.get_config
