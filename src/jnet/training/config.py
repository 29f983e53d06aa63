"""Training configs: small frozen dataclasses per concern, loaded from YAML with dotted overrides.

A config file has four sections, each optional (missing fields take the defaults below)::

    data:  {path, task, channels, fold, downsample}
    model: {the keyword arguments of jnet.build_model}
    loss:  {weights, lowres_target, mid_target, dice_weight}
    train: {epochs, batch_size, lr, optimizer, scheduler, ..., augment, seed, precision, devices}

``load_config("cfg.yaml", ["train.epochs=5", "data.path=/data/prostate16"])`` reads the file, applies
the overrides (each value parsed with ``yaml.safe_load``, so ``5`` is an int and ``[T2, ADC]`` a
list) and checks every field: an unknown key is a :class:`~jnet.errors.ConfigError` naming it and
the closest valid key, a mistyped value names the field, the expected type and the value found.
The ``model`` section is passed to ``jnet.build_model`` as is; it validates its own fields.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import yaml

from jnet.errors import ConfigError
from jnet.sources.types import TASK_KINDS
from jnet.utils.atomic import write_text
from jnet.utils.options import closest, unknown


@dataclass(frozen=True)
class DataConfig:
    """Which prepared slice cache to train on, and how to simulate the low-resolution input."""

    path: Optional[str] = None  # the slice cache of `jnet data prepare`; configs leave it unset
    task: Optional[Literal[TASK_KINDS]] = None  # checked against the cache
    channels: Optional[tuple[str, ...]] = None  # checked against the cache's channel names
    fold: int = 0
    downsample: Literal["area", "nearest", "gaussian"] = "area"
    # training inputs made by one of these per sample (acquisition augmentation); None: downsample.
    # Validation, evaluation and prediction use downsample.
    train_downsample: Optional[tuple[Literal["area", "nearest", "gaussian"], ...]] = None


@dataclass(frozen=True)
class LossConfig:
    """The multi-scale loss (``jnet.training.losses.MultiScaleLoss``)."""

    weights: Optional[tuple[float, ...]] = None  # one per output scale, low to high; None = equal
    lowres_target: Literal["nearest", "area"] = "nearest"
    mid_target: Literal["bilinear", "area"] = "bilinear"
    dice_weight: float = 0.0
    dice_scales: Literal["all", "final"] = "all"  # where the Dice term applies


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, hardware and run control."""

    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    head_lr_scale: float = 1.0  # the learned head's learning rate is lr x this (J-Net only)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    scheduler: Literal["none", "cosine", "step"] = "none"
    warmup: float = 0.0  # epochs of linear learning-rate warm-up (any scheduler)
    min_lr: float = 0.0  # cosine: the learning rate reached at the last step
    step_size: int = 30  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    accelerator: str = "auto"
    devices: Union[int, str, tuple[int, ...]] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    seed: int = 0
    num_workers: int = 2
    # At high resolution, before downsampling (jnet.cache.reader): none | flip (random
    # horizontal/vertical flips, as published) | full (flips + small affine + intensity jitter);
    # true/false mean flip/none.
    augment: Union[bool, Literal["none", "flip", "full"]] = "flip"
    early_stopping: Optional[int] = None  # patience in validation rounds; None = off
    # decay of an exponential moving average of the weights (and BatchNorm statistics), which
    # validation, checkpoints and the trained model use; None = off
    ema: Optional[float] = None
    val_every: int = 1  # validate every this many epochs
    limit_train_batches: Union[int, float] = 1.0  # int = batches per epoch, float = fraction
    limit_val_batches: Union[int, float] = 1.0
    log_every: int = 10  # steps between logged training losses
    deterministic: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):
            object.__setattr__(self, "augment", "flip" if self.augment else "none")


@dataclass(frozen=True)
class Config:
    """A whole training config. ``model`` holds the keyword arguments of ``jnet.build_model``
    (treat it as read-only; use :func:`dataclasses.replace` to change a config)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=dict)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = ("data", "model", "loss", "train")

_AT_LEAST_0, _AT_LEAST_1, _ABOVE_0 = (0, math.inf, True), (1, math.inf, True), (0, math.inf, False)
#: Bounds of the numeric fields whose type allows values that make no sense:
#: ``(low, high, inclusive)``; ``None`` values (a field switched off) always pass.
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "data.fold": _AT_LEAST_0, "loss.dice_weight": _AT_LEAST_0,
    "train.epochs": _AT_LEAST_1, "train.batch_size": _AT_LEAST_1, "train.lr": _ABOVE_0,
    "train.head_lr_scale": _ABOVE_0, "train.weight_decay": _AT_LEAST_0, "train.momentum": (0, 1, True),
    "train.warmup": _AT_LEAST_0, "train.min_lr": _AT_LEAST_0, "train.step_size": _AT_LEAST_1,
    "train.gamma": _ABOVE_0, "train.num_nodes": _AT_LEAST_1, "train.num_workers": _AT_LEAST_0,
    "train.early_stopping": _AT_LEAST_1,
    "train.ema": (0, 1, False),  # a decay: 0 and 1 would not average
    "train.val_every": _AT_LEAST_1, "train.limit_train_batches": _ABOVE_0,
    "train.limit_val_batches": _AT_LEAST_0,  # 0: no validation
    "train.log_every": _AT_LEAST_1,
}


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply dotted ``key=value`` overrides and validate it.

    Args:
        path: the YAML file.
        overrides: e.g. ``["train.epochs=5", "model.width=8", "data.channels=[T2, ADC]"]``.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: bad YAML (file and line), an unknown key (with the closest valid one), a value
            of the wrong type or outside its choices (field, expected, found).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({e})") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from e
    raw = {} if raw is None else raw
    try:
        return config_from_dict(apply_overrides(raw, overrides, source=str(path)), source=str(path))
    except ConfigError as e:
        # a bad value given on the command line is blamed on the command line, not on the file
        blamed = [item for item in overrides if item.partition("=")[0].strip() in str(e)]
        prefix = f"{path}: "
        if blamed and str(e).startswith(prefix):
            raise ConfigError(f"override {blamed[-1]!r}: {str(e)[len(prefix):]}") from e
        raise


def apply_overrides(raw: Mapping, overrides: Sequence[str], source: str = "config") -> dict:
    """Return a copy of the raw config dict with dotted ``key=value`` overrides applied.

    Values are parsed with ``yaml.safe_load`` (``5`` -> int, ``1e-3`` -> float, ``null`` -> None).
    Unknown keys are reported by :func:`config_from_dict`, which sees the result.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections {', '.join(SECTIONS)}, "
                          f"found {type(raw).__name__}")
    out = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key such as "
                              f"train.epochs=5")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from e
        parts = key.split(".")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is a value, "
                                  f"not a section")
            node = child
        node[parts[-1]] = value
    return out


def config_from_dict(raw: Mapping, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from plain data (as read from YAML).

    Raises:
        ConfigError: naming ``source`` and the dotted field.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections {', '.join(SECTIONS)}, "
                          f"found {type(raw).__name__}")
    model = raw.get("model") or {}
    if not isinstance(model, Mapping):
        raise ConfigError(f"{source}: model: expected a mapping of build_model fields, "
                          f"found {type(model).__name__}")
    _check_model_keys(model, source)
    rest = {k: v for k, v in raw.items() if k != "model"}
    config = _build(Config, {**rest, "model": {}}, "", source)
    _check_bounds(config, source)
    return dataclasses.replace(config, model=_deep_copy(dict(model)))


def to_dict(config: Any) -> dict:
    """Plain, YAML/JSON-able data for a config or one of its sections (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def dump_yaml(config: Config, path: str | os.PathLike) -> None:
    """Write ``config`` as YAML, atomically (sections in the order data, model, loss, train)."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None))


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two configs (or plain dicts)."""
    a = to_dict(a) if dataclasses.is_dataclass(a) else a
    b = to_dict(b) if dataclasses.is_dataclass(b) else b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        names = []
        for key in sorted(set(a) | set(b), key=str):
            names += diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return names
    return [] if a == b else [prefix.rstrip(".")]


def suggest(name: str, valid: Sequence[str]) -> str:
    """A hint for an unknown key: the closest valid one (:func:`jnet.utils.options.closest`), else
    the list of valid ones."""
    near = closest(name, valid)
    return f"did you mean {near!r}?" if near is not None else f"valid keys: {', '.join(valid)}"


# --- validation -----------------------------------------------------------------------------------


def _check_model_keys(model: Mapping, source: str) -> None:
    # build_model validates values; here we only catch misspelt keys early, when its fields are known.
    valid = _model_fields()
    if valid is None:
        return
    for key in model:
        if key not in valid:
            raise ConfigError(f"{source}: model.{key}: unknown key; {suggest(str(key), sorted(valid))}")


def _model_fields() -> Optional[set]:
    """The keyword arguments of ``jnet.build_model`` (None if it takes ``**kwargs`` only)."""
    import inspect

    try:
        from jnet.models import build_model
    except ImportError:  # pragma: no cover - models not installed: build_model checks at train time
        return None

    params = inspect.signature(build_model).parameters.values()
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if any(p.kind is p.VAR_KEYWORD for p in params) or not names:
        return None
    return names


def _check_bounds(config: Config, source: str) -> None:
    for name, (low, high, inclusive) in BOUNDS.items():
        section, key = name.split(".")
        value = getattr(getattr(config, section), key)
        if value is None or ((low <= value <= high) if inclusive else (low < value < high)):
            continue
        if high == math.inf:
            expected = f"{'of at least' if inclusive else 'above'} {low}"
        else:
            expected = f"between {low} and {high}{'' if inclusive else ' (both excluded)'}"
        raise ConfigError(f"{source}: {name}: expected a value {expected}, found {value!r}")


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {where}: expected a mapping, found {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key; {suggest(str(key), list(fields))}")
    values = {}
    for key, value in raw.items():
        values[key] = _check(value, hints[key], f"{prefix}{key}", source)
    return cls(**values)


def _check(value: Any, hint: Any, name: str, source: str) -> Any:
    """Return ``value`` converted to ``hint`` (int -> float, list -> tuple), or raise ConfigError."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, name + ".", source)
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        # YAML reads `precision: 32` as an int; the choices are strings.
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in choices:
            value = str(value)
        if value in choices:
            return value
        raise ConfigError(f"{source}: {unknown(name, value, choices)}")
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own message is the most precise
            return _check(value, real[0], name, source)
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, name, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {name}: expected {_describe(hint)}, found {value!r}")
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {name}: expected a list of {_describe(item)}, "
                              f"found {value!r}")
        return tuple(_check(v, item, f"{name}[{i}]", source) for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
    raise ConfigError(f"{source}: {name}: expected {_describe(hint)}, found {value!r}")


def _describe(hint: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping", type(None): "null"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint))


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj
