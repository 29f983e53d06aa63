"""Config loading, overrides, validation messages, round trips and the shipped configs."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jnet.training.config import (Config, apply_overrides, config_from_dict, diff, dump_yaml, load_config,
                         to_dict)
from jnet.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(p for p in CONFIGS.rglob("*.yaml") if "sweeps" not in p.parts)  # sweeps: tests/test_sweep.py


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_with_typed_overrides(tmp_path):
    path = write(tmp_path, "data: {downsample: nearest}\nmodel: {width: 8}\ntrain: {epochs: 3}\n")
    config = load_config(path, ["train.epochs=5", "train.lr=1e-2", "data.channels=[T2, ADC]",
                                "train.augment=false", "train.early_stopping=null",
                                "model.in_size=32", "train.precision=bf16-mixed"])
    assert config.train.epochs == 5 and isinstance(config.train.epochs, int)
    assert config.train.lr == pytest.approx(0.01) and isinstance(config.train.lr, float)
    assert config.data.channels == ("T2", "ADC")
    assert config.data.downsample == "nearest"
    assert config.train.augment == "none"  # false means no augmentation
    assert config.train.early_stopping is None
    assert config.model == {"width": 8, "in_size": 32}
    assert config.train.precision == "bf16-mixed"
    assert config.loss == dataclasses.replace(Config().loss)  # untouched section keeps defaults


def test_yaml_int_precision_becomes_string(tmp_path):
    config = load_config(write(tmp_path, "train: {precision: 32}\n"))
    assert config.train.precision == "32"


def test_integer_accepted_for_float_but_bool_not_for_int():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer, found True"):
        config_from_dict({"train": {"epochs": True}})


@pytest.mark.parametrize("raw, pattern", [
    ({"train": {"epohcs": 5}}, r"cfg\.yaml: train\.epohcs: unknown key; did you mean 'epochs'\?"),
    ({"trian": {}}, r"trian: unknown key; did you mean 'train'\?"),
    ({"loss": {"dice": 1.0}}, r"loss\.dice: unknown key; did you mean 'dice_weight'\?"),
    ({"model": {"widht": 8}}, r"model\.widht: unknown key; did you mean 'width'\?"),
    ({"train": {"epochs": "five"}}, r"train\.epochs: expected an integer, found 'five'"),
    ({"train": {"optimizer": "adamm"}},
     r"train\.optimizer: unknown value 'adamm'; expected one of adam, adamw, sgd; did you mean 'adam'\?"),
    ({"data": {"downsample": "bicubic"}}, r"data\.downsample: unknown value 'bicubic'; expected one of area, nearest, gaussian"),
    ({"loss": {"weights": [1, "x"]}}, r"loss\.weights\[1\]: expected a number, found 'x'"),
    ({"train": [1, 2]}, r"train: expected a mapping"),
    ({"model": [1]}, r"model: expected a mapping"),
])
def test_bad_keys_and_values_name_the_field(tmp_path, raw, pattern):
    import yaml

    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)


@pytest.mark.parametrize("override, pattern", [
    ("train.epochs=0", r"train\.epochs: expected a value of at least 1, found 0"),
    ("train.batch_size=-4", r"train\.batch_size: expected a value of at least 1, found -4"),
    ("train.lr=0", r"train\.lr: expected a value above 0, found 0\.0"),
    ("train.lr=-1e-3", r"train\.lr: expected a value above 0"),
    ("train.head_lr_scale=0", r"train\.head_lr_scale: expected a value above 0"),
    ("train.warmup=-1", r"train\.warmup: expected a value of at least 0"),
    ("train.num_workers=-1", r"train\.num_workers: expected a value of at least 0"),
    ("train.ema=1", r"train\.ema: expected a value between 0 and 1 \(both excluded\), found 1\.0"),
    ("train.momentum=1.5", r"train\.momentum: expected a value between 0 and 1, found 1\.5"),
    ("loss.dice_weight=-0.5", r"loss\.dice_weight: expected a value of at least 0"),
    ("data.fold=-1", r"data\.fold: expected a value of at least 0"),
])
def test_values_out_of_range_are_refused_on_the_command_line(tmp_path, override, pattern):
    path = write(tmp_path, "train: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"^override '" + override.replace(".", r"\.") + "': " + pattern):
        load_config(path, [override])


def test_bounds_name_real_fields_and_pass_the_edges_and_null():
    from jnet.training.config import BOUNDS

    for name in BOUNDS:
        section, key = name.split(".")
        assert key in {f.name for f in dataclasses.fields(getattr(Config(), section))}, name
    edges = config_from_dict({"train": {"epochs": 1, "lr": 1e-9, "warmup": 0, "ema": None,
                                        "momentum": 0, "limit_val_batches": 0},
                              "loss": {"dice_weight": 0}})
    assert edges.train.epochs == 1 and edges.train.ema is None


def test_unknown_override_key_is_named(tmp_path):
    path = write(tmp_path, "train: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"train\.batchsize: unknown key; did you mean 'batch_size'\?"):
        load_config(path, ["train.batchsize=4"])


@pytest.mark.parametrize("item", ["train.epochs", "=5", "train..epochs=5"])
def test_malformed_override(item):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, [item])


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="train.epochs is a value, not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+:\d+: invalid YAML"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip_dump_and_load(tmp_path):
    config = config_from_dict({"data": {"path": "/x", "channels": ["T2"]},
                               "model": {"width": 4, "head": "chain"},
                               "loss": {"weights": [1, 2, 3]}, "train": {"devices": [0, 1]}})
    dump_yaml(config, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == config
    assert diff(config, again) == []
    assert list(to_dict(config)) == ["data", "model", "loss", "train"]


def test_diff_names_changed_fields():
    a = config_from_dict({"train": {"epochs": 3}, "model": {"width": 4}})
    b = config_from_dict({"train": {"epochs": 4}, "model": {"width": 8, "head": "chain"}})
    assert diff(a, b) == ["model.head", "model.width", "train.epochs"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_load_and_build(path):
    from jnet.models import build_model

    config = load_config(path)
    assert config.data.path is None, "configs leave data.path to the user"
    fields = {"in_channels": 4 if "brats" in path.name else 1,
              "classes": 3 if ("multiclass" in path.name or "brats" in path.name) else 1,
              **config.model, "width": 2}  # width 2 keeps the build fast
    model = build_model(**fields)
    assert model.in_size == config.model["in_size"]


def test_paper_recipe_is_the_published_one():
    for name in ("jnet16", "jnet32", "baseline16", "baseline32"):
        config = load_config(CONFIGS / "paper" / f"{name}.yaml")
        assert config.data.downsample == "nearest"
        assert (config.train.optimizer, config.train.lr, config.train.batch_size) == ("adam", 1e-3, 2)
        assert (config.train.epochs, config.train.augment, config.train.scheduler) == (200, "flip", "none")
        assert config.model["variant"] == "faithful" and config.model["width"] == 16
        assert (config.loss.lowres_target, config.loss.mid_target) == ("nearest", "bilinear")
        assert config.loss.weights is None and config.loss.dice_weight == 0.0
        assert config.data.task == "binary" and config.data.channels == ("T2",)
    assert load_config(CONFIGS / "paper" / "jnet16.yaml").model["head"] == "paper"
    assert load_config(CONFIGS / "paper" / "baseline16.yaml").model["train_at"] == "input"
