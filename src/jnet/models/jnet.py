"""J-Net (a base plus a learned upsampling head), the baselines, and ``build_model``.

The output contract, shared by every model ``build_model`` returns: in training mode ``forward``
returns a list of logits from low to high resolution (spatial sizes ``model.output_scales``); in
eval mode one tensor ``(B, classes, out_size, out_size)``.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from jnet.errors import ConfigError
from jnet.models.bases import BASES, DEFAULT_VARIANT, VARIANTS
from jnet.models.blocks import NORMS, tracing, upsample_bilinear
from jnet.models.heads import HEADS, MAX_STAGES, build_head
from jnet.utils.options import choose, unknown

ARCHS = ("jnet", "baseline", "base")
TRAIN_AT = ("input", "output")

# Every build_model field and its default. out_size None resolves to 256 (the paper's S) for
# jnet/baseline and to in_size for arch="base".
DEFAULTS: dict[str, Any] = {
    "arch": "jnet", "base": "elunet", "variant": DEFAULT_VARIANT, "width": 16, "depth": 4,
    "norm": "batch", "in_channels": 1, "classes": 1, "in_size": 16, "out_size": None,
    "head": "paper", "head_skips": True, "head_code": 8, "head_hidden": 32, "head_layers": 1,
    "head_dropout": 0.0, "head_image": True, "train_at": "input",
}
#: model field -> the head option it sets (each head takes the options its class declares)
HEAD_OPTIONS = {"head_skips": "skips", "head_code": "code", "head_hidden": "hidden",
                "head_layers": "layers", "head_dropout": "dropout", "head_image": "image"}
DEFAULT_OUT_SIZE = 256


def _stages(in_size: int, out_size: int) -> int | None:
    """K with ``out_size == in_size * 2**K`` (K >= 0), else None."""
    if out_size < in_size or out_size % in_size:
        return None
    ratio = out_size // in_size
    return ratio.bit_length() - 1 if ratio & (ratio - 1) == 0 else None


def _check_input(model: nn.Module, x: torch.Tensor) -> None:
    if tracing():
        return
    if x.ndim != 4 or x.shape[1] != model.in_channels or x.shape[-2:] != (model.in_size,) * 2:
        raise ConfigError(
            f"model input: expected (B, {model.in_channels}, {model.in_size}, {model.in_size}) "
            f"(model.in_channels, model.in_size), found {tuple(x.shape)}")


class JNet(nn.Module):
    """Any base plus a learned upsampling head: predicts at ``out_size`` from an ``in_size`` input.

    Args:
        base: any module mapping ``(B, in_channels, s, s)`` to logits ``(B, classes, s, s)``.
        in_size: s, the input size.
        out_size: S = s * 2**K with K in 1..5.
        classes: logit channels C.
        head: a name in :data:`jnet.models.heads.HEADS` or a head module: called as
            ``head(base_output, image)``, returning the outputs low -> high.
        head_skips: the ``paper``/``chain`` head's skip paths from the base's logits.
        in_channels: input channels; default ``base.in_channels``.
        head_code, head_hidden, head_layers, head_dropout, head_image: the ``subpixel`` and ``dysample`` heads'
            code channels, hidden width, hidden layers, dropout on the hidden features and whether
            it sees the image. The base must then emit ``classes + head_code`` channels
            (:func:`build_model` builds it so).

    Shape: train ``(B, Cin, s, s) -> [(B, C, s*f, s*f) for f in head.factors]`` (``paper``:
    ``f = 1, 2, ..., 2**K``; ``subpixel``: ``f = 1, 2**K``); eval ``(B, Cin, s, s) -> (B, C, S, S)``.

    Inference is fast by default: an eval-mode forward without autograd (``torch.no_grad`` or
    ``torch.inference_mode``) of an affine (``foldable``) head runs the exact folded head of
    :mod:`jnet.models.fold`, built on first use and rebuilt when the head's weights, dtype or
    device change; entering training mode drops it. With autograd on, or ``auto_fold = False``,
    the head runs as trained (so gradients reach its weights and the two paths can be measured).
    """

    def __init__(self, base: nn.Module, in_size: int, out_size: int, classes: int,
                 head: str | nn.Module = "paper", head_skips: bool = True,
                 in_channels: int | None = None, head_code: int = 8, head_hidden: int = 32,
                 head_layers: int = 1, head_dropout: float = 0.0, head_image: bool = True) -> None:
        super().__init__()
        k = _stages(in_size, out_size)
        if k is None or not 1 <= k <= MAX_STAGES:
            raise ConfigError(f"model.out_size: {out_size} is not in_size*2^K with K in "
                              f"1..{MAX_STAGES} (in_size {in_size})")
        self.base = base
        self.in_channels = in_channels if in_channels is not None else base.in_channels
        self.head = head if not isinstance(head, str) else build_head(
            head, classes, k, skips=head_skips, code=head_code, hidden=head_hidden, layers=head_layers,
            dropout=head_dropout, in_channels=self.in_channels, image=head_image)
        self.in_size, self.out_size, self.classes, self.k = in_size, out_size, classes, k
        factors = getattr(self.head, "factors", [2 ** i for i in range(k + 1)])
        self.output_scales = [in_size * f for f in factors]
        # set by jnet.models.fold.fold_head: exact inference-only replacement of `head`
        self.folded_head: nn.Module | None = None
        self.auto_fold = True
        # (weights key, FoldedHead): a tuple, so not a submodule (not in state_dict, not moved by .to)
        self._auto_folded: tuple[tuple, nn.Module] | None = None
        self._head_modules: list[nn.Module] | None = None  # the head's modules, head first
        self.config: dict[str, Any] = {
            "arch": "jnet", "in_channels": self.in_channels, "classes": classes, "in_size": in_size,
            "out_size": out_size, "head": head if isinstance(head, str) else type(head).__name__,
            "head_skips": head_skips}

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        _check_input(self, x)
        out = self.base(x)  # the logits, then any code channels the head asked for
        if self.training:
            if self.folded_head is not None:
                raise ConfigError("model: this J-Net has a folded head, which is inference-only; "
                                  "train the unfolded model and fold it again (fold_head)")
            return self.head(out, x)
        return self.upsample(out, x)

    def upsample(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The eval-mode head alone: the base's output ``out`` for the input ``x`` to the prediction
        at ``out_size`` (folded where it can be, as ``forward`` runs it; timed on its own by
        ``benchmarks/bench_models.py``).

        Shape: ``(B, C + code, s, s), (B, Cin, s, s) -> (B, C, S, S)``.
        """
        if self.folded_head is not None:
            return self.folded_head(out)
        folded = self._fold_for_inference()
        if folded is not None:
            return folded(out)
        return self.head(out, x)[-1].contiguous()  # NCHW, whatever the weights' layout

    def train(self, mode: bool = True) -> "JNet":
        self._auto_folded = self._head_modules = None  # training changes the weights: fold again
        return super().train(mode)

    def _fold_for_inference(self) -> nn.Module | None:
        """The folded head for this eval forward, or None where the head must run as it is."""
        if (not self.auto_fold or not getattr(self.head, "foldable", False) or torch.is_grad_enabled()
                or tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()):
            return None  # exporters and compilers choose their own path (jnet export folds explicitly)
        if self._head_modules is None or self._head_modules[0] is not self.head:
            self._head_modules = list(self.head.modules())  # walking them per call: 36 us
        # read live from each module, so a replaced parameter is seen as well as an in-place edit
        state = [t for m in self._head_modules for d in (m._parameters, m._buffers)
                 for t in d.values() if t is not None]
        if not state or state[0].is_meta:  # shape-only runs (MAC counting) have no weights to fold
            return None
        if any(t.is_inference() for t in state):
            return None  # made under inference_mode: no version counter tells an edit, so run it as it is
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in state)
        if self._auto_folded is None or self._auto_folded[0] != key:
            from jnet.models.fold import fold_affine_head

            ref = state[0]
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable in both modes
                folded = fold_affine_head(self.head, self.in_size, self.classes,
                                          self.out_size // self.in_size, ref.dtype).to(ref.device)
            self._auto_folded = (key, folded)
        return self._auto_folded[1]


class Baseline(nn.Module):
    """The base alone, its logits upsampled to ``out_size`` with fixed bilinear interpolation.

    Args:
        base: as for :class:`JNet`.
        in_size: s.
        out_size: S = s * 2**K (K >= 0; K = 0 is the plain base, ``arch="base"``).
        train_at: ``input`` (the paper's baseline: training output = the logits at s) or
            ``output`` (training output = the logits upsampled to S, loss at S).
        classes, in_channels: default ``base.classes`` / ``base.in_channels``.

    Shape: train ``(B, Cin, s, s) -> [(B, C, s, s)]`` (``input``) or ``[(B, C, S, S)]``
    (``output``); eval ``(B, Cin, s, s) -> (B, C, S, S)``.
    """

    def __init__(self, base: nn.Module, in_size: int, out_size: int, train_at: str = "input",
                 classes: int | None = None, in_channels: int | None = None) -> None:
        super().__init__()
        if _stages(in_size, out_size) is None:
            raise ConfigError(f"model.out_size: {out_size} is not in_size*2^K with K >= 0 "
                              f"(in_size {in_size})")
        choose(train_at, TRAIN_AT, "model.train_at")
        self.base = base
        self.in_channels = in_channels if in_channels is not None else base.in_channels
        self.classes = classes if classes is not None else base.classes
        self.in_size, self.out_size, self.train_at = in_size, out_size, train_at
        self.output_scales = [in_size if train_at == "input" else out_size]
        self.config: dict[str, Any] = {
            "arch": "baseline" if out_size != in_size else "base", "in_channels": self.in_channels,
            "classes": self.classes, "in_size": in_size, "out_size": out_size, "train_at": train_at}

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        _check_input(self, x)
        logits = self.base(x)
        if self.training and self.train_at == "input":
            return [logits]
        if self.out_size != self.in_size:
            logits = upsample_bilinear(logits, self.out_size)
        return [logits] if self.training else logits.contiguous()  # NCHW, whatever the weights' layout


# --- the factory --------------------------------------------------------------------------------


def _powers(start: int, ks: range) -> list[int]:
    return [start * 2 ** k for k in ks]


def _size_problems(cfg: dict[str, Any], out_given: bool) -> list[str]:
    """Problems with in_size / out_size / depth, each naming the rule and the nearest valid values."""
    problems = []
    arch, s, big, depth = cfg["arch"], cfg["in_size"], cfg["out_size"], cfg["depth"]
    step = 2 ** depth
    if s % step:
        below, above = (s // step) * step, (s // step + 1) * step
        near = ", ".join(str(v) for v in (below, above) if v > 0)
        problems.append(f"model.in_size: {s} is not divisible by 2^depth = {step} "
                        f"(depth {depth}); nearest valid: {near}")
    if arch == "base":
        if big != s:
            problems.append(f"model.out_size: arch 'base' predicts at its input size, so out_size "
                            f"must equal in_size {s}, found {big}; use arch 'jnet' or 'baseline' "
                            f"to predict at {big}")
        return problems
    k_min, k_max = (1, MAX_STAGES) if arch == "jnet" else (0, None)
    rule = f"K in {k_min}..{k_max}" if k_max else "K >= 0"
    k = _stages(s, big)
    if k is not None and k >= k_min and (k_max is None or k <= k_max):
        return problems
    name = f"model.out_size: {big}" + ("" if out_given else " (the default)")
    if big < s:
        valid = _powers(s, range(k_min, (k_max or 5) + 1))
        msg = (f"{name} is smaller than in_size {s}; it must be {s}*2^K ({rule}): "
               f"{', '.join(map(str, valid))}")
    elif k is None:
        lo = s * 2 ** max(k_min, (big // s).bit_length() - 1)
        near = [v for v in (lo, lo * 2) if k_max is None or v <= s * 2 ** k_max] or [lo // 2]
        msg = f"{name} is not {s}*2^K ({rule}); nearest valid: {', '.join(map(str, near))}"
    elif k < k_min:
        msg = (f"{name} equals in_size; a J-Net needs at least one x2 stage ({s * 2}); use "
               f"arch 'base' to predict at the input size")
    else:
        msg = (f"{name} = {s}*2^{k} needs K={k} x2 stages, at most {k_max} are supported; "
               f"nearest valid: {s * 2 ** k_max}")
    # which in_sizes would reach this out_size, given the depth rule
    ins = [big // 2 ** j for j in range(max(k_min, 1), (k_max or 5) + 1)
           if big % 2 ** j == 0 and (big // 2 ** j) % step == 0]
    if ins and big >= s:
        msg += f"; in_sizes that reach {big} (divisible by {step}): {', '.join(map(str, sorted(ins)))}"
    problems.append(msg)
    return problems


def resolve_config(**config: Any) -> dict[str, Any]:
    """Check ``config`` and fill in the defaults; the result is what ``model.config`` holds.

    Fields that do not apply (``variant`` for a MONAI base, the ``head*`` fields for the
    baselines and the options a head does not take, ``train_at`` for jnet/base) are validated if
    given and resolved to ``None``.

    Raises:
        ConfigError: one error listing every problem, each naming the field, the rule and the
            nearest valid values.
    """
    problems = []
    for key in sorted(set(config) - set(DEFAULTS)):
        problems.append(unknown(f"model.{key}", key, DEFAULTS, "field"))
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS and v is not None}}
    for key, valid in (("arch", ARCHS), ("base", tuple(BASES)), ("variant", VARIANTS),
                       ("norm", NORMS), ("head", HEADS), ("train_at", TRAIN_AT)):
        if cfg[key] not in valid:
            problems.append(unknown(f"model.{key}", cfg[key], valid))
    for key in ("width", "depth", "in_channels", "classes", "in_size", "out_size"):
        value = cfg[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            problems.append(f"model.{key}: expected a positive integer, found {value!r}")
    for key, least in (("head_code", 0), ("head_hidden", 0), ("head_layers", 1)):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            problems.append(f"model.{key}: expected an integer >= {least}, found {value!r}")
    dropout = cfg["head_dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        problems.append(f"model.head_dropout: expected a number in [0, 1), found {dropout!r}")
    for key in ("head_skips", "head_image"):
        if not isinstance(cfg[key], bool):
            problems.append(f"model.{key}: expected true or false, found {cfg[key]!r}")
    if problems:  # names and types first: the size rules need valid integers
        raise ConfigError("invalid model config:\n  " + "\n  ".join(problems))

    out_given = cfg["out_size"] is not None
    if not out_given:
        cfg["out_size"] = cfg["in_size"] if cfg["arch"] == "base" else DEFAULT_OUT_SIZE
    problems += _size_problems(cfg, out_given)
    if cfg["base"] == "basicunet" and cfg["depth"] != 4:
        problems.append(f"model.depth: base 'basicunet' has a fixed depth of 4, found {cfg['depth']}")
    if cfg["norm"] == "instance" and cfg["in_size"] >> cfg["depth"] <= 1:
        problems.append(
            f"model.norm: 'instance' is degenerate with a 1x1 bottleneck (in_size {cfg['in_size']}, "
            f"depth {cfg['depth']}): use norm 'group' or 'batch' (batch_size >= 2), or a larger in_size")
    if problems:
        raise ConfigError("invalid model config:\n  " + "\n  ".join(problems))

    if cfg["base"] != "elunet":
        cfg["variant"] = None
    takes = inspect.signature(HEADS[cfg["head"]]).parameters if cfg["arch"] == "jnet" else {}
    for key, option in HEAD_OPTIONS.items():
        if option not in takes:
            cfg[key] = None
    if cfg["arch"] != "jnet":
        cfg["head"] = None
    if cfg["arch"] != "baseline":
        cfg["train_at"] = None
    return cfg


def build_model(**config: Any) -> nn.Module:
    """Build a model from config fields (the ``model`` section of a run config).

    Fields and defaults: ``arch="jnet"`` (``jnet`` | ``baseline`` | ``base``), ``base="elunet"``
    (``elunet`` | ``unet`` | ``basicunet``), ``variant="clean"`` (``clean`` | ``faithful``;
    ELU-Net only), ``width=16``, ``depth=4``, ``norm="batch"`` (``batch`` | ``instance`` |
    ``group``), ``in_channels=1``, ``classes=1``, ``in_size=16``, ``out_size=256`` (``in_size``
    for ``arch="base"``), ``head="paper"`` (``paper`` | ``chain`` | ``subpixel`` | ``dysample``), ``head_skips=True``
    (paper, chain), ``head_code=8``, ``head_hidden=32``, ``head_layers=1``, ``head_dropout=0``,
    ``head_image=True`` (subpixel), ``train_at="input"`` (baseline: ``input`` | ``output``).

    Returns:
        A :class:`JNet` (arch jnet) or :class:`Baseline` (arch baseline / base) whose ``.config``
        is the full resolved config (JSON-able; see :func:`resolve_config`).

    Raises:
        ConfigError: bad fields, names or sizes; one error listing every problem.
    """
    cfg = resolve_config(**config)
    code = cfg["head_code"] or 0  # the subpixel head's extra base channels
    base = BASES[cfg["base"]](cfg["in_channels"], cfg["classes"] + code, cfg["width"], cfg["depth"],
                              cfg["norm"], cfg["variant"])
    if cfg["arch"] == "jnet":
        model: nn.Module = JNet(base, cfg["in_size"], cfg["out_size"], cfg["classes"], cfg["head"],
                                bool(cfg["head_skips"]), cfg["in_channels"], code, cfg["head_hidden"] or 0,
                                cfg["head_layers"] or 1, float(cfg["head_dropout"] or 0),
                                cfg["head_image"] is not False)  # None (no subpixel head): unused
    else:
        model = Baseline(base, cfg["in_size"], cfg["out_size"], cfg["train_at"] or "input",
                         cfg["classes"], cfg["in_channels"])
    model.config = cfg
    # Convolution weights stored channels last let oneDNN run every convolution in its own layout:
    # on CPU, eager inference 1.2-1.6x faster at 16-32 px input and 1.4-2.3x at 64-160 px, a
    # training step 1.1x (docs/models.md). Results are the same to float rounding;
    # load_state_dict copies into these weights, so checkpoints of either layout load.
    return model.to(memory_format=torch.channels_last)


# The fields as keyword-only parameters, so that callers (jnet.training.config) can list and check them.
build_model.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in DEFAULTS.items()],
    return_annotation=nn.Module)
