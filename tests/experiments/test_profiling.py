"""Complexity counters against hand-computed counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from jnet.experiments.profiling import count_macs, count_parameters, macs_by_module
from jnet.models import build_model, fold_head


@pytest.mark.parametrize("meta", [True, False])
def test_conv_macs_by_hand(meta):
    # 3x3 conv 3 -> 8 on 10x12, padding 1: every output value is 3 * 3 * 3 multiply-adds
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (2, 3, 10, 12), meta=meta) == 2 * (8 * 10 * 12) * (3 * 3 * 3) == 51_840
    # stride 2 on 16x16 -> 8x8 outputs
    assert count_macs(nn.Conv2d(4, 6, 3, stride=2, padding=1), (1, 4, 16, 16), meta=meta) == 6 * 8 * 8 * 4 * 9
    # groups: each output sees in_channels / groups inputs
    assert count_macs(nn.Conv2d(4, 8, 3, padding=1, groups=2), (1, 4, 5, 5), meta=meta) == 8 * 25 * 2 * 9


@pytest.mark.parametrize("meta", [True, False])
def test_stride2_transposed_conv_macs_by_hand(meta):
    # each of the 4 * 5 * 5 input values is multiplied into a 2x2 patch of each of 6 outputs
    convt = nn.ConvTranspose2d(4, 6, 2, stride=2)
    assert count_macs(convt, (1, 4, 5, 5), meta=meta) == 100 * 6 * 4 == 2_400
    # (thop's rule, output elements x in_channels x k^2 = 6*10*10 * 4*4 = 9,600, is 4x too high)


def test_linear_and_shared_module_counted_per_call():
    lin = nn.Linear(5, 7)
    assert count_macs(nn.Sequential(nn.Flatten(), lin), (3, 1, 1, 5)) == 3 * 7 * 5

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    model = Twice()
    assert count_macs(model, (1, 1, 4, 4)) == 2 * 16 * 9
    assert macs_by_module(model, (1, 4, 4)) == {"conv": 2 * 16 * 9}
    assert count_parameters(model) == 10  # not twice
    conv = nn.Conv2d(1, 1, 3, padding=1)  # one module registered under two names
    for meta in (True, False):
        assert count_macs(nn.Sequential(conv, nn.ReLU(), conv), (1, 1, 4, 4), meta=meta) == 2 * 16 * 9


def test_count_parameters_shared_and_trainable():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_parameters(model) == 12
    shared.bias.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 9


def test_reference_model_macs():
    j16 = build_model(variant="faithful", in_size=16, out_size=256)
    base16 = count_macs(j16.base, (1, 1, 16, 16))
    assert count_macs(j16, (1, 1, 16, 16)) == 46_921_728  # docs/method.md: about 46.9 M
    # paper head 16 -> 256, by hand: ConvT 1->1 2x2 = 4 MACs per input pixel, Conv3x3 1->1 = 9 per
    # output pixel, ConvT 2->2 = 16 per input pixel, Conv3x3 2->1 = 18 per output pixel
    head = (4 * 16**2 + 9 * 32**2) + (4 * 32**2 + 9 * 64**2)        # out2, out3
    head += (4 * 16**2 + 9 * 32**2) + (4 * 32**2 + 9 * 64**2)       # skip4
    head += (4 * 16**2 + 9 * 32**2) + (4 * 32**2 + 9 * 64**2) + (4 * 64**2 + 9 * 128**2)  # skip8
    head += (16 * 64**2 + 18 * 128**2) + (16 * 128**2 + 18 * 256**2)  # up_concat, applied twice
    assert count_macs(j16, (1, 1, 16, 16)) - base16 == head
    # J-Net-32: 181.06 M (the reference code's 181.9 M also computes a skip path it never uses)
    assert count_macs(build_model(variant="faithful", in_size=32, out_size=256), (1, 1, 32, 32)) == 181_059_584
    base256 = build_model(arch="base", variant="faithful", in_size=256)
    assert count_macs(base256, (1, 1, 256, 256)) / 1e9 == pytest.approx(11.47, abs=0.005)


def test_folded_head_macs_and_batch():
    model = build_model(width=4, in_size=16, out_size=64)
    folded = fold_head(model)
    base = count_macs(model.base, (1, 1, 16, 16))
    # 16*16 positions x (1 * 3*3 neighbourhood) x (1 * 4*4 block)
    assert count_macs(folded, (1, 1, 16, 16)) == base + 256 * 9 * 16
    assert count_macs(folded, (3, 1, 16, 16)) == 3 * (base + 256 * 9 * 16)
    assert count_macs(folded, (3, 1, 16, 16), meta=False) == 3 * (base + 256 * 9 * 16)


def test_counting_leaves_the_model_alone():
    model = build_model(width=4, in_size=16, out_size=64).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, (2, 1, 16, 16), meta=False)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_subpixel_head_macs_by_hand():
    model = build_model(head="subpixel", head_code=2, head_hidden=4, width=4, in_size=16, out_size=64)
    base = count_macs(model.base, (1, 1, 16, 16))  # emits 1 logit + 2 code channels
    conv = 16 * 16 * 4 * (1 + 2 + 1) * 9            # Conv3x3 of (logits, code, image) -> 4 hidden
    blocks = 16 * 16 * (4 + 9) * 16                  # (hidden + 3x3 logits) -> each 4x4 block
    assert count_macs(model, (1, 1, 16, 16)) == base + conv + blocks
    assert count_macs(model, (2, 1, 16, 16), meta=False) == 2 * (base + conv + blocks)
