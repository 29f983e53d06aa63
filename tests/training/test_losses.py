"""MultiScaleLoss: golden values on hand-made 4x4 -> 8x8 cases, target forms, errors.

Expected values are computed here with explicit numpy formulas (not with torch's losses)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jnet.errors import ConfigError, DataError
from jnet.training.losses import MultiScaleLoss
from jnet.transforms.tasks import target_from_label

# an 8x8 label map: a 4x5 block of 1s, a 2x2 block of 2s (multiclass) / bitmask 3 (regions)
LABEL = np.zeros((8, 8), dtype=np.int64)
LABEL[2:6, 1:6] = 1
LABEL[5:7, 5:7] = 2


def _logits(channels: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1.5, size=(1, channels, size, size))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def _bce(x: np.ndarray, t: np.ndarray) -> float:
    p = 1 / (1 + np.exp(-x))
    return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ce(x: np.ndarray, t: np.ndarray) -> float:
    """Cross-entropy with (soft) class-probability targets t, both (1, C, h, w)."""
    return float(np.mean(-(t * np.log(_softmax(x))).sum(axis=1)))


def _dice(p: np.ndarray, t: np.ndarray) -> float:
    """Batch soft Dice loss, per channel then averaged; p, t (1, C, h, w)."""
    inter = (p * t).sum(axis=(0, 2, 3))
    return float(np.mean(1 - (2 * inter + 1e-5) / (p.sum(axis=(0, 2, 3)) + t.sum(axis=(0, 2, 3)) + 1e-5)))


def _onehot(label: np.ndarray, c: int) -> np.ndarray:
    return (label[None, None] == np.arange(c).reshape(1, c, 1, 1)).astype(np.float64)


# By hand: 8 -> 4 "nearest" takes the pixel nearest to each coarse pixel's centre, source index
# floor((i + 0.5) * 2) = 2i + 1; "area" and 8 -> 4 bilinear (align_corners=False, exactly at
# the midpoints) both average 2x2 blocks; 8 -> 2 nearest takes 4i + 2.
def _nearest(a: np.ndarray, f: int) -> np.ndarray:
    return a[..., f // 2::f, f // 2::f]


def _mean_blocks(a: np.ndarray, f: int) -> np.ndarray:
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))


def test_binary_golden_4_to_8():
    fg = (LABEL > 0).astype(np.float64)[None, None]
    x4, x8 = _logits(1, 4, 1), _logits(1, 8, 2)
    want = _bce(x4, _nearest(fg, 2)) + _bce(x8, fg)
    got = MultiScaleLoss("binary")([_t(x4), _t(x8)], torch.tensor(LABEL > 0, dtype=torch.uint8)[None])
    assert got.item() == pytest.approx(want, rel=1e-5)
    want_area = _bce(x4, _mean_blocks(fg, 2)) + _bce(x8, fg)
    got_area = MultiScaleLoss("binary", lowres_target="area")([_t(x4), _t(x8)], _t(fg))
    assert got_area.item() == pytest.approx(want_area, rel=1e-5)


def test_binary_three_scales_mid_target_and_weights():
    fg = (LABEL > 0).astype(np.float64)[None, None]
    x2, x4, x8 = _logits(1, 2, 3), _logits(1, 4, 4), _logits(1, 8, 5)
    outs = [_t(x2), _t(x4), _t(x8)]
    terms = [_bce(x2, _nearest(fg, 4)), _bce(x4, _mean_blocks(fg, 2)), _bce(x8, fg)]
    target = torch.tensor(LABEL > 0).long()[None]
    assert MultiScaleLoss("binary")(outs, target).item() == pytest.approx(sum(terms), rel=1e-5)
    weighted = MultiScaleLoss("binary", weights=[0.5, 0, 2])(outs, target)
    assert weighted.item() == pytest.approx(0.5 * terms[0] + 2 * terms[2], rel=1e-5)
    area = MultiScaleLoss("binary", lowres_target="area", mid_target="area")(outs, target)
    assert area.item() == pytest.approx(
        _bce(x2, _mean_blocks(fg, 4)) + _bce(x4, _mean_blocks(fg, 2)) + _bce(x8, fg), rel=1e-5)
    got_terms = MultiScaleLoss("binary").terms(outs, target)
    assert [t.item() for t in got_terms] == pytest.approx(terms, rel=1e-5)


def test_multiclass_golden_4_to_8():
    hot = _onehot(LABEL, 3)
    x4, x8 = _logits(3, 4, 6), _logits(3, 8, 7)
    target = torch.tensor(LABEL)[None]
    want = _ce(x4, _nearest(hot, 2)) + _ce(x8, hot)
    assert MultiScaleLoss("multiclass")([_t(x4), _t(x8)], target).item() == pytest.approx(want, rel=1e-5)
    soft = _ce(x4, _mean_blocks(hot, 2)) + _ce(x8, hot)
    got = MultiScaleLoss("multiclass", lowres_target="area")([_t(x4), _t(x8)], target)
    assert got.item() == pytest.approx(soft, rel=1e-5)
    # soft Dice on the foreground channels (1, 2), added with its weight at every scale
    dice = (_dice(_softmax(x4)[:, 1:], _nearest(hot, 2)[:, 1:])
            + _dice(_softmax(x8)[:, 1:], hot[:, 1:]))
    got = MultiScaleLoss("multiclass", dice_weight=0.5)([_t(x4), _t(x8)], target)
    assert got.item() == pytest.approx(want + 0.5 * dice, rel=1e-5)


def test_regions_golden_4_to_8():
    bitmask = np.where(LABEL == 2, 3, LABEL)  # region 0 = any label, region 1 = the 2x2 block
    bits = np.stack([(bitmask >> i) & 1 for i in range(2)])[None].astype(np.float64)
    x4, x8 = _logits(2, 4, 8), _logits(2, 8, 9)
    target = torch.tensor(bitmask, dtype=torch.uint8)[None]
    want = _bce(x4, _nearest(bits, 2)) + _bce(x8, bits)
    assert MultiScaleLoss("regions")([_t(x4), _t(x8)], target).item() == pytest.approx(want, rel=1e-5)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    dice = _dice(sig(x4), _nearest(bits, 2)) + _dice(sig(x8), bits)
    got = MultiScaleLoss("regions", dice_weight=2.0)([_t(x4), _t(x8)], _t(bits))
    assert got.item() == pytest.approx(want + 2 * dice, rel=1e-5)


def test_binary_dice_golden():
    fg = (LABEL > 0).astype(np.float64)[None, None]
    x8 = _logits(1, 8, 10)
    want = _bce(x8, fg) + 0.3 * _dice(1 / (1 + np.exp(-x8)), fg)
    got = MultiScaleLoss("binary", dice_weight=0.3)(_t(x8), torch.tensor(LABEL > 0)[None].long())
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("kind,classes", [("binary", 1), ("multiclass", 3), ("regions", 2)])
def test_target_forms_agree(kind, classes):
    label = torch.tensor(np.where(LABEL == 2, 3, LABEL) if kind == "regions" else LABEL)
    if kind == "binary":
        label = (label > 0).long()
    label = label[None].expand(2, 8, 8).to(torch.uint8)
    outs = [torch.randn(2, classes, 4, 4, requires_grad=True), torch.randn(2, classes, 8, 8)]
    loss = MultiScaleLoss(kind)
    dense = target_from_label(label, kind, classes)  # the form the training loop passes
    if kind == "multiclass":
        dense = torch.nn.functional.one_hot(dense, classes).permute(0, 3, 1, 2).float()
    a = loss(outs, label)
    assert a.item() == pytest.approx(loss(outs, dense).item(), rel=1e-6)
    assert a.item() == pytest.approx(loss(outs, target_from_label(label, kind, classes)).item(), rel=1e-6)
    a.backward()
    assert outs[0].grad is not None and torch.isfinite(outs[0].grad).all()


def test_binary_accepts_float_hw_target():
    fg = torch.tensor(LABEL > 0, dtype=torch.float32)[None]
    x = torch.randn(1, 1, 8, 8)
    loss = MultiScaleLoss("binary")
    assert loss(x, fg).item() == pytest.approx(loss(x, fg.long()).item())


def test_shape_errors_name_both_shapes():
    loss = MultiScaleLoss("binary")
    with pytest.raises(ConfigError, match=r"\(2, 1, 16, 16\).*\(2, 1, 8, 8\)"):
        loss([torch.randn(2, 1, 4, 4), torch.randn(2, 1, 16, 16)], torch.zeros(2, 8, 8).long())
    with pytest.raises(ConfigError, match=r"\(3, 8, 8\).*\(2, 1, 8, 8\)"):
        loss(torch.randn(2, 1, 8, 8), torch.zeros(3, 8, 8).long())
    with pytest.raises(ConfigError, match=r"\(2, 2, 8, 8\).*\(2, 3, 8, 8\)"):
        MultiScaleLoss("regions")(torch.randn(2, 3, 8, 8), torch.zeros(2, 2, 8, 8))
    with pytest.raises(ConfigError, match="1 output channel"):
        loss(torch.randn(2, 2, 8, 8), torch.zeros(2, 8, 8).long())
    with pytest.raises(ConfigError, match="must be integers"):
        MultiScaleLoss("multiclass")(torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 8))


def test_label_values_out_of_range():
    with pytest.raises(DataError, match=r"0\.\.2 .*found values 0\.\.3"):
        MultiScaleLoss("multiclass")(torch.randn(1, 3, 8, 8), torch.tensor(LABEL * 3 // 2)[None])
    with pytest.raises(DataError, match=r"0\.\.1"):
        MultiScaleLoss("binary")(torch.randn(1, 1, 8, 8), torch.tensor(LABEL)[None])


def test_bad_options():
    with pytest.raises(ConfigError, match="loss.lowres_target.*nearest, area"):
        MultiScaleLoss("binary", lowres_target="bilinear")
    with pytest.raises(ConfigError, match="loss.mid_target"):
        MultiScaleLoss("binary", mid_target="nearest")
    with pytest.raises(ConfigError, match="task kind"):
        MultiScaleLoss("semantic")
    with pytest.raises(ConfigError, match="loss.dice_weight"):
        MultiScaleLoss("binary", dice_weight=-1)
    with pytest.raises(ConfigError, match="2 weights given.*3 outputs"):
        MultiScaleLoss("binary", weights=[1, 1])(
            [torch.randn(1, 1, s, s) for s in (2, 4, 8)], torch.zeros(1, 8, 8).long())


def test_dice_at_the_final_scale_only():
    torch.manual_seed(0)
    outs = [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 32, 32)]
    target = (torch.rand(2, 32, 32) > 0.5).long()
    bce = MultiScaleLoss("binary", lowres_target="area")
    everywhere = MultiScaleLoss("binary", lowres_target="area", dice_weight=1.0)
    final = MultiScaleLoss("binary", lowres_target="area", dice_weight=1.0, dice_scales="final")
    low, high = bce.terms(outs, target), everywhere.terms(outs, target)
    assert torch.allclose(final.terms(outs, target)[0], low[0])      # BCE alone at the low scale
    assert torch.allclose(final.terms(outs, target)[1], high[1])     # BCE + Dice at the final one
    assert not torch.allclose(low[0], high[0])
    with pytest.raises(ConfigError, match="loss.dice_scales: unknown value 'last'"):
        MultiScaleLoss("binary", dice_scales="last")
