"""Models: parameter counts, the output contract over bases x sizes x heads, config errors, fold."""
from __future__ import annotations

import inspect
import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from jnet.errors import ConfigError
from jnet.training.losses import MultiScaleLoss
from jnet.models import (BASES, Baseline, ChainHead, ELUNet, JNet, PaperHead, build_model,
                         fold_head)
from jnet.models.bases import VARIANTS
from jnet.models.fold import fold_affine_head
from jnet.models.heads import HEADS
from jnet.experiments.profiling import count_parameters


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- parameter counts ---------------------------------------------------------------------------


def test_faithful_elunet_parameter_counts():
    assert count_parameters(ELUNet(1, 1, width=16, variant="faithful")) == 3_194_081
    assert count_parameters(ELUNet(1, 1, width=8, variant="faithful")) == 800_113


def test_clean_variant_unshares_exactly_the_three_decoder_upsamplers():
    n = 16
    # UpSample(c_in -> c_out, x2) = ConvT(c_in, c_in, 2) + Conv3x3(c_in -> c_out), all with bias
    def up(c_in, c_out):
        return (c_in * c_in * 4 + c_in) + (c_in * c_out * 9 + c_out)
    shared = up(8 * n, 4 * n) + up(4 * n, 2 * n) + up(2 * n, n)  # levels 3, 2, 1
    clean = count_parameters(ELUNet(1, 1, width=n, variant="clean"))
    assert clean - 3_194_081 == shared == 183_120


def test_paper_head_sizes():
    # K=4 (16 -> 256): out2, out3: 2 x (ConvT 5 + Conv 10); skip4: 2 ConvT + 1 shared Conv;
    # up_concat: ConvT(2,2) 18 + Conv(2->1) 19; skip8: 3 ConvT + 1 shared Conv  => 112
    assert count_parameters(PaperHead(1, 4)) == 30 + 20 + 37 + 25 == 112
    assert count_parameters(PaperHead(1, 3)) == 30 + 20 + 37 == 87
    for c in (1, 3):  # the documented table: 13C^2+2C, 26C^2+4C, 77C^2+10C, 98C^2+14C, 123C^2+19C
        sizes = [13 * c * c + 2 * c, 26 * c * c + 4 * c, 77 * c * c + 10 * c,
                 98 * c * c + 14 * c, 123 * c * c + 19 * c]
        assert [count_parameters(PaperHead(c, k)) for k in range(1, 6)] == sizes
    assert count_parameters(PaperHead(3, 4)) == 924 > 112


def test_faithful_jnet16_total_and_head_reuse():
    model = build_model(variant="faithful", width=16, in_size=16, out_size=256)
    assert count_parameters(model) == 3_194_193
    # out5 reuses out4's module: one up_concat, applied twice
    calls = []
    model.head.up_concat.register_forward_hook(lambda *a: calls.append(1))
    model.eval()(torch.zeros(1, 1, 16, 16))
    assert len(calls) == 2


# --- the output contract ------------------------------------------------------------------------

#: Every registered base (ELU-Net in each variant) and every registered head: a new base or head is
#: tested by being registered, with no list to edit here.
BASE_CASES = [(base, variant) for base in BASES for variant in (VARIANTS if base == "elunet" else (None,))]
SIZES = [(16, 256), (32, 256), (80, 320)]


class TestModelContract:
    """The output contract of every model ``build_model`` can make: shapes in train and eval mode,
    a gradient for every parameter, no NaN/Inf."""

    @staticmethod
    def check(model: nn.Module, batch: int = 2) -> None:
        s, big, c = model.in_size, model.out_size, model.classes
        x = torch.randn(batch, model.in_channels, s, s)
        model.train()
        outs = model(x)
        assert isinstance(outs, list)
        assert [o.shape[-1] for o in outs] == model.output_scales == sorted(model.output_scales)
        for o, size in zip(outs, model.output_scales):
            assert o.shape == (batch, c, size, size)
            assert torch.isfinite(o).all()
        kind = "binary" if c == 1 else "multiclass"
        target = torch.randint(0, max(c, 2), (batch, big, big))
        MultiScaleLoss(kind)(outs, target).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"parameters without a gradient: {missing}"
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        model.eval()
        with torch.no_grad():
            y = model(x)
        assert isinstance(y, torch.Tensor) and y.shape == (batch, c, big, big)
        assert torch.isfinite(y).all()

    @pytest.mark.parametrize("base,variant", BASE_CASES)
    @pytest.mark.parametrize("in_size,out_size", SIZES)
    @pytest.mark.parametrize("head", list(HEADS))
    def test_jnet(self, base, variant, in_size, out_size, head):
        model = build_model(base=base, variant=variant, width=4, in_size=in_size, out_size=out_size,
                            head=head)
        k = (out_size // in_size).bit_length() - 1
        factors = model.head.factors  # the input scale first, the output scale last
        assert factors[0] == 1 and factors[-1] == 2 ** k and factors == sorted(set(factors))
        assert model.output_scales == [in_size * f for f in factors]
        self.check(model)

    @pytest.mark.parametrize("base", list(BASES))
    @pytest.mark.parametrize("arch,train_at", [("baseline", "input"), ("baseline", "output"),
                                               ("base", None)])
    def test_baseline(self, base, arch, train_at):
        out_size = 128 if arch == "baseline" else 32
        model = build_model(arch=arch, base=base, width=4, in_size=32, out_size=out_size,
                            train_at=train_at, classes=3)
        expected = {"input": [32], "output": [128], None: [32]}[train_at]
        assert model.output_scales == expected
        self.check(model)


def test_jnet_wraps_any_module():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    model = JNet(Tiny(), in_size=8, out_size=32, classes=3, head="chain", in_channels=2)
    assert (model.in_size, model.out_size, model.classes, model.in_channels) == (8, 32, 3, 2)
    TestModelContract.check(model)
    assert isinstance(model.head, ChainHead) and model.base.__class__.__name__ == "Tiny"


def test_baseline_upsamples_bilinearly_in_eval():
    model = build_model(arch="baseline", width=4, in_size=16, out_size=64).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        want = nn.functional.interpolate(model.base(x), size=(64, 64), mode="bilinear",
                                         align_corners=False)
        assert torch.allclose(model(x), want)
    assert isinstance(model, Baseline)


def test_multiclass_three_input_channels():
    model = build_model(width=4, in_channels=3, classes=4, in_size=16, out_size=64)
    assert model.in_channels == 3 and model.head.classes == 4
    TestModelContract.check(model)


@pytest.mark.parametrize("arch, head", [("jnet", "subpixel"), ("jnet", "paper"), ("baseline", None),
                                        ("base", None)])
def test_factory_lays_convolution_weights_out_channels_last(arch, head):
    """build_model stores 4-D weights channels last (oneDNN's own layout, faster on CPU): outputs
    equal those of the same weights laid out NCHW, and weights saved in either layout load."""
    import copy

    fields = {"arch": arch, "width": 4, "in_channels": 2, "classes": 3, "in_size": 16,
              "out_size": 16 if arch == "base" else 64, **({"head": head} if head else {})}
    model = build_model(**fields).eval()
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert any(not p.is_contiguous() for p in weights)
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    assert all(p.is_contiguous() for p in nchw.parameters())
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        want = nchw(x)
        assert model(x).is_contiguous()  # outputs stay NCHW (3 classes: the layouts differ)
        model.auto_fold = False
        assert model(x).is_contiguous()
        model.auto_fold = True
        assert torch.allclose(model(x), want, atol=1e-5)
        loaded = build_model(**fields).eval()
        loaded.load_state_dict(nchw.state_dict())
        assert all(p.is_contiguous(memory_format=torch.channels_last)
                   for p in loaded.parameters() if p.dim() == 4)
        assert torch.allclose(loaded(x), want, atol=1e-5)


# --- config and errors --------------------------------------------------------------------------


def test_config_is_complete_jsonable_and_round_trips():
    for cfg in [{}, {"arch": "baseline", "base": "unet", "width": 4, "train_at": "output"},
                {"arch": "base", "in_size": 32, "width": 4}, {"head": "chain", "variant": "faithful",
                                                            "width": 4, "in_size": 80, "out_size": 320}]:
        model = build_model(**cfg)
        assert set(model.config) == set(inspect.signature(build_model).parameters)
        text = json.dumps(model.config)
        again = build_model(**json.loads(text))
        assert again.config == model.config
        assert again.state_dict().keys() == model.state_dict().keys()
    default = build_model().config
    assert default["variant"] == "clean" and default["out_size"] == 256 and default["arch"] == "jnet"
    assert build_model(arch="base", in_size=32, width=4).config["out_size"] == 32
    assert build_model(base="unet", width=4).config["variant"] is None


def test_build_model_signature_lists_fields():
    params = inspect.signature(build_model).parameters
    assert list(params) == ["arch", "base", "variant", "width", "depth", "norm", "in_channels",
                            "classes", "in_size", "out_size", "head", "head_skips", "head_code",
                            "head_hidden", "head_layers", "head_dropout", "head_image", "train_at"]
    assert all(p.kind is p.KEYWORD_ONLY for p in params.values())
    assert set(BASES) == {"elunet", "unet", "basicunet"}


def _error(**cfg) -> str:
    with pytest.raises(ConfigError) as info:
        build_model(**cfg)
    return str(info.value)


def test_out_size_not_a_power_of_two_multiple():
    msg = _error(in_size=16, out_size=320)
    assert "model.out_size" in msg and "320 is not 16*2^K" in msg
    assert "nearest valid: 256, 512" in msg
    assert "80, 160" in msg  # the in_sizes that reach 320 with depth 4
    assert "20," not in msg  # 20 and 40 are not divisible by 2^4


def test_80_to_320_is_valid():
    model = build_model(width=4, in_size=80, out_size=320)
    assert model.output_scales == [80, 160, 320]


@pytest.mark.parametrize("cfg,expected", [
    ({"in_size": 20}, ["model.in_size", "20 is not divisible by 2^depth = 16", "16, 32"]),
    ({"in_size": 32, "out_size": 16}, ["model.out_size", "smaller than in_size 32", "64"]),
    ({"in_size": 16, "out_size": 1024}, ["K=6", "at most 5", "512"]),
    ({"in_size": 16, "out_size": 16}, ["equals in_size", "arch 'base'"]),
    ({"arch": "base", "in_size": 32, "out_size": 64}, ["out_size must equal in_size 32"]),
    ({"base": "elunett"}, ["model.base", "'elunett'", "did you mean 'elunet'"]),
    ({"base": "resnet"}, ["model.base", "elunet, unet, basicunet"]),
    ({"head": "papr"}, ["model.head", "did you mean 'paper'"]),
    ({"norm": "layer"}, ["model.norm", "batch, instance, group"]),
    ({"variant": "faithfull"}, ["model.variant", "did you mean 'faithful'"]),
    ({"train_at": "both"}, ["model.train_at", "input, output"]),
    ({"widht": 8}, ["model.widht: unknown field", "did you mean 'width'"]),
    ({"width": 0}, ["model.width", "positive integer", "0"]),
    ({"width": 2.5}, ["model.width", "positive integer"]),
    ({"head_skips": "yes"}, ["model.head_skips"]),
    ({"base": "basicunet", "depth": 3, "in_size": 32}, ["basicunet", "fixed depth of 4"]),
    ({"norm": "instance", "in_size": 16}, ["model.norm", "instance", "1x1", "group"]),
])
def test_bad_config(cfg, expected):
    msg = _error(**cfg)
    for part in expected:
        assert part in msg, (part, msg)


def test_one_error_lists_every_problem():
    msg = _error(widht=8, base="elunett", head="papr")
    assert "model.widht" in msg and "model.base" in msg and "model.head" in msg


def test_batchnorm_1x1_bottleneck_batch_1_is_refused_in_training():
    model = build_model(width=4, in_size=16, out_size=64)
    with pytest.raises(ConfigError) as info:
        model.train()(torch.randn(1, 1, 16, 16))
    msg = str(info.value)
    for part in ("model.norm", "1x1", "batch size 1", "batch_size >= 2", "group"):
        assert part in msg, part
    model.train()(torch.randn(2, 1, 16, 16))  # batch 2 is fine
    model.eval()(torch.randn(1, 1, 16, 16))   # eval uses running statistics
    for base in BASES:
        safe = build_model(base=base, norm="group", width=4, in_size=16, out_size=64)
        assert len(safe.train()(torch.randn(1, 1, 16, 16))) == 3
        with pytest.raises(ConfigError, match="model.norm"):
            build_model(base=base, width=4, in_size=16, out_size=64).train()(torch.randn(1, 1, 16, 16))


def test_wrong_input_shape_is_refused():
    model = build_model(width=4, in_size=16, out_size=64).eval()
    with pytest.raises(ConfigError, match=r"expected \(B, 1, 16, 16\).*found \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))


def test_monai_base_trains_with_the_head():
    model = build_model(base="basicunet", width=4, in_size=16, out_size=32, norm="group")
    x = torch.randn(2, 1, 16, 16)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    target = (((yy - 16) ** 2 + (xx - 14) ** 2) < 60).long().expand(2, 32, 32)
    loss_fn = MultiScaleLoss("binary")
    optim = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(6):
        optim.zero_grad()
        loss = loss_fn(model.train()(x), target)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0] and losses[-1] == min(losses), losses


# --- fold ---------------------------------------------------------------------------------------


def _randomise_head(model: nn.Module) -> None:
    # trained heads have non-trivial biases; make the border effects of every layer visible
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.5)


@pytest.mark.parametrize("in_size,out_size,classes,head", [
    (16, 256, 1, "paper"), (32, 256, 1, "paper"), (16, 256, 3, "paper"), (16, 64, 2, "chain")])
def test_fold_parity(in_size, out_size, classes, head):
    model = build_model(variant="faithful", width=4, in_size=in_size, out_size=out_size,
                        classes=classes, head=head).eval()
    _randomise_head(model)
    folded = fold_head(model)
    assert folded.folded_head.radius == 1
    assert folded.config == model.config and folded.output_scales == model.output_scales
    assert model.folded_head is None  # the original is untouched
    x = torch.randn(3, 1, in_size, in_size)
    model.auto_fold = False  # the head as trained
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert got.shape == (3, classes, out_size, out_size)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-4)
    border = slice(0, out_size // in_size)  # the first low-resolution row's output block
    np.testing.assert_allclose(got[..., border, :].numpy(), want[..., border, :].numpy(),
                               rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("head", ["paper", "chain"])
def test_eval_mode_folds_automatically_and_exactly(head):
    model = build_model(variant="faithful", width=4, in_size=16, out_size=128, classes=2, head=head).eval()
    _randomise_head(model)
    x = torch.randn(3, 1, 16, 16)
    with torch.inference_mode():
        fast = model(x)
        model.auto_fold = False
        slow = model(x)
        model.auto_fold = True
    assert model._auto_folded is not None and model.folded_head is None
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-4, atol=1e-5)
    built = model._auto_folded[1]
    with torch.no_grad():  # same weights: the fold is reused, also outside inference mode
        np.testing.assert_allclose(model(x).numpy(), fast.numpy())
    assert model._auto_folded[1] is built
    assert not any(k.startswith("_auto") for k in model.state_dict())


@pytest.mark.parametrize("head", ["paper", "subpixel"])
def test_upsample_is_the_eval_forward_after_the_base(head):
    """JNet.upsample (the head alone, as benchmarks time it) gives the eval forward's output from
    the base's, folded (paper) or as it is (subpixel)."""
    model = build_model(variant="faithful", width=4, in_size=16, out_size=64, head=head).eval()
    _randomise_head(model)
    x = torch.randn(2, 1, 16, 16)
    with torch.inference_mode():
        whole, alone = model(x), model.upsample(model.base(x), x)
    assert alone.shape == (2, 1, 64, 64)
    np.testing.assert_array_equal(alone.numpy(), whole.numpy())


def _folded_and_unfolded(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The default eval output (folded) and the head as trained, without autograd."""
    with torch.no_grad():
        fast = model(x)
        model.auto_fold = False
        slow = model(x)
        model.auto_fold = True
    return fast, slow


def test_auto_fold_follows_the_weights_and_training():
    model = build_model(variant="faithful", width=4, in_size=16, out_size=64).eval()
    _randomise_head(model)
    x = torch.randn(2, 1, 16, 16)
    before, _ = _folded_and_unfolded(model, x)
    with torch.no_grad():
        for p in model.head.parameters():  # as an optimiser step or load_state_dict would
            p.mul_(1.5)
    after, want = _folded_and_unfolded(model, x)
    assert not torch.allclose(before, after)
    np.testing.assert_allclose(after.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    conv = model.head.stages[0][1]  # a parameter replaced by assignment, not edited in place
    conv.bias = nn.Parameter(conv.bias.detach() + 1.0)
    replaced, want = _folded_and_unfolded(model, x)
    assert not torch.allclose(replaced, after)
    np.testing.assert_allclose(replaced.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    model.train()
    assert model._auto_folded is None  # training drops the fold
    model.eval()
    out = model(x)  # autograd on: the head as trained, so gradients reach its weights
    out.sum().backward()
    assert model._auto_folded is None
    assert all(p.grad is not None for p in model.head.parameters())


def test_model_built_under_inference_mode_runs_its_head_as_it_is():
    """Weights made under torch.inference_mode have no version counter to tell an edit from: the
    eval path runs the head unfolded (exact) instead of failing."""
    x = torch.randn(2, 1, 16, 16)
    with torch.inference_mode():
        model = build_model(head="paper", width=4, in_size=16, out_size=64).eval()
        got = model(x)
    plain = build_model(head="paper", width=4, in_size=16, out_size=64).eval()
    plain.load_state_dict(model.state_dict())
    plain.auto_fold = False
    with torch.no_grad():
        assert torch.equal(got, plain(x))


def test_fold_finds_a_larger_radius():
    class WideHead(nn.Module):  # a 9x9 conv at 2x: reaches 2 low-resolution pixels
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(1, 1, 2, stride=2)
            self.conv = nn.Conv2d(1, 1, 9, padding=4)

        def forward(self, x):
            return [x, self.conv(self.up(x))]

    head = WideHead()
    folded = fold_affine_head(head, in_size=12, classes=1, factor=2)
    assert folded.radius == 2
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), head(x)[-1].numpy(), rtol=1e-3, atol=1e-5)


def test_fold_refuses_non_affine_heads_training_and_baselines():
    model = build_model(width=4, in_size=16, out_size=64, head="chain")
    model.head.stages[0].append(nn.ReLU())
    with pytest.raises(ConfigError, match="not an affine map"):
        fold_head(model)
    folded = fold_head(build_model(width=4, in_size=16, out_size=64))
    with pytest.raises(ConfigError, match="inference-only"):
        folded.train()(torch.randn(2, 1, 16, 16))
    with pytest.raises(ConfigError, match="only arch 'jnet'"):
        fold_head(build_model(arch="baseline", width=4, in_size=16, out_size=64))


def test_folded_model_exports_to_onnx_with_dynamic_batch(tmp_path):
    import onnxruntime as ort  # a dependency of jnet: a missing one must fail, not skip
    model = build_model(variant="faithful", width=4, in_size=16, out_size=256).eval()
    _randomise_head(model)
    folded = fold_head(model)
    buf = io.BytesIO()
    torch.onnx.export(folded, torch.randn(1, 1, 16, 16), buf, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 1, 16, 16)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


# --- the dysample head (learned sampling) ------------------------------------------------------


def test_dysample_head_starts_as_bilinear_and_moves_its_samples():
    """Zero offsets read the logits where bilinear resizing does (borders included); a constant
    offset of +1 input pixel in x reads each output pixel's value from one input pixel to the right."""
    head = HEADS["dysample"](1, 2, code=0, hidden=4, in_channels=1, scope=1.0)
    logits, image = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    bilinear = nn.functional.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(head(logits, image)[1], bilinear, rtol=0, atol=1e-5)
        head.out.bias.view(-1, 2)[:, 0] = 20.0  # tanh -> 1: dx = scope = one input pixel
        shifted = head(logits, image)[1]
    want = nn.functional.interpolate(torch.roll(logits, -1, dims=-1), size=(32, 32), mode="bilinear",
                                     align_corners=False)
    # away from the borders (where resizing and sampling clamp to the edge), the output moved by f = 4
    torch.testing.assert_close(shifted[..., 2:20], want[..., 2:20], rtol=0, atol=1e-4)
    with pytest.raises(ConfigError, match="head_hidden"):
        HEADS["dysample"](1, 2, hidden=0)


# --- the subpixel head --------------------------------------------------------------------------


def test_untrained_subpixel_jnet_is_the_bilinear_baseline():
    """Its last layer starts at zero: before training it predicts what the baseline with the same
    base weights predicts (to float round-off; the bilinear part is a product with weights read off
    F.interpolate, exact at the borders too), so it starts from fixed interpolation, never from an
    empty map."""
    jnet = build_model(head="subpixel", width=4, in_size=16, out_size=128).eval()
    base = build_model(arch="baseline", width=4, in_size=16, out_size=128, classes=9).eval()
    base.base.load_state_dict(jnet.base.state_dict())  # 1 logit + 8 code channels
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(jnet(x), base(x)[:, :1], rtol=0, atol=1e-5)


def test_subpixel_head_sees_code_channels_and_image_in_its_block():
    """Output block (i, j) depends on the 3x3 neighbourhood of low-resolution pixel (i, j) of the
    logits, code channels and image, and on nothing farther away."""
    head = HEADS["subpixel"](1, 3, code=2, hidden=4, in_channels=1)
    with torch.no_grad():
        head.out.weight.normal_()
    out = torch.randn(1, 3, 8, 8, requires_grad=True)
    image = torch.randn(1, 1, 8, 8, requires_grad=True)
    fine = head(out, image)[-1]
    assert fine.shape == (1, 1, 64, 64)
    fine[0, 0, 4 * 8:5 * 8, 4 * 8:5 * 8].sum().backward()  # the block of pixel (4, 4)
    for grad in (out.grad[0, 1:], image.grad[0]):  # code channels and image
        seen = grad.abs().sum(0)
        assert seen[3:6, 3:6].sum() > 0
        seen[3:6, 3:6] = 0
        assert seen.sum() == 0


def test_subpixel_head_layers_widen_its_view():
    """head_layers hidden 3x3 layers: a block sees a (2 L + 1)^2 neighbourhood of the base's output."""
    model = build_model(head="subpixel", head_layers=2, head_code=2, head_hidden=4, width=4,
                        in_size=16, out_size=64)
    assert model.config["head_layers"] == 2
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.head.body) == 2
    with torch.no_grad():
        model.head.out.weight.normal_()
    out = torch.randn(1, 3, 16, 16, requires_grad=True)
    model.head(out, torch.randn(1, 1, 16, 16))[-1][0, 0, 32:36, 32:36].sum().backward()  # pixel (8, 8)
    seen = out.grad[0, 1:].abs().sum(0)  # the code channels
    assert seen[6:11, 6:11].sum() > 0
    seen[6:11, 6:11] = 0
    assert seen.sum() == 0
    assert "model.head_layers: expected an integer >= 1" in _error(head="subpixel", head_layers=0)
    assert build_model(arch="baseline", width=4).config["head_layers"] is None


def test_subpixel_head_without_the_image_sees_only_the_base():
    """head_image false: the head's input is the base's output alone (an ablation)."""
    model = build_model(head="subpixel", head_image=False, head_code=2, head_hidden=4, width=4,
                        in_size=16, out_size=64)
    assert model.config["head_image"] is False and model.head.body[0].in_channels == 1 + 2
    out = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model.head.out.weight.normal_()
        first = model.head(out, torch.randn(2, 1, 16, 16))[-1]
        torch.testing.assert_close(model.head(out, torch.zeros(2, 1, 16, 16))[-1], first, rtol=0, atol=0)
    assert build_model(head="subpixel", width=4).head.body[0].in_channels == 1 + 8 + 1
    assert build_model(width=4).config["head_image"] is None  # the published head takes no image
    assert "model.head_image: expected true or false" in _error(head="subpixel", head_image="no")


def test_subpixel_options_and_the_fields_that_do_not_apply():
    model = build_model(head="subpixel", head_code=0, head_hidden=0, width=4, in_size=16, out_size=64)
    assert model.config["head_skips"] is None and model.base.classes == 1
    assert count_parameters(model.head) == (1 + 0 + 1) * 9 * 16 + 16  # one affine map of the 3x3 window
    paper = build_model(width=4, in_size=16, out_size=64)
    assert paper.config["head_code"] is None and paper.config["head_hidden"] is None
    assert build_model(arch="baseline", width=4).config["head_code"] is None
    assert "model.head_code: expected an integer >= 0" in _error(head="subpixel", head_code=-1)
    with pytest.raises(ConfigError, match="not an affine map"):
        fold_head(build_model(head="subpixel", width=4, in_size=16, out_size=64))


def test_meta_tensor_eval_runs_unfolded():
    """Shape-only runs (the MAC counter's meta tensors) have no weights: no automatic fold."""
    from jnet.experiments.profiling import count_macs

    model = build_model(variant="faithful", width=4, in_size=16, out_size=64).eval()
    with torch.no_grad():
        assert count_macs(model, (1, 1, 16, 16)) > 0


def test_subpixel_head_dropout_acts_in_training_only():
    model = build_model(head="subpixel", head_dropout=0.5, width=4, in_size=16, out_size=64)
    assert model.config["head_dropout"] == 0.5
    with torch.no_grad():
        model.head.out.weight.normal_()
    out, image = torch.randn(2, 9, 16, 16), torch.randn(2, 1, 16, 16)
    model.train()
    torch.manual_seed(0)
    first = model.head(out, image)[-1]
    assert not torch.equal(first, model.head(out, image)[-1])  # a new mask each call
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.head(out, image)[-1], model.head(out, image)[-1])
    assert "model.head_dropout: expected a number in [0, 1)" in _error(head="subpixel", head_dropout=1.0)
    assert build_model(arch="baseline", width=4).config["head_dropout"] is None


def test_only_large_intermediates_are_kept():
    """Above MIN_BYTES an inference intermediate is a view of the thread's kept buffer (the same
    memory call after call); below it, and with autograd on, the caller allocates fresh."""
    from jnet.models import scratch

    like = torch.zeros(1)
    large = (scratch.MIN_BYTES // 4 + 1,)
    with torch.no_grad():
        assert scratch.intermediate((8, 8), like) is None
        first, second = scratch.intermediate(large, like), scratch.intermediate(large, like)
        assert first.shape == large and first.data_ptr() == second.data_ptr()
    assert scratch.intermediate(large, like) is None  # autograd on


@pytest.fixture
def kept_buffers(monkeypatch):
    """Every inference intermediate in a kept buffer, however small (the tests' models are tiny)."""
    from jnet.models import scratch

    monkeypatch.setattr(scratch, "MIN_BYTES", 0)


@pytest.mark.parametrize("head", ["paper", "subpixel"])
def test_inference_reuses_memory_without_aliasing_results(head, kept_buffers):
    """The heads' intermediate lives in a reused buffer at inference: results stay independent
    from call to call, across inference_mode and no_grad, and match the head run with autograd."""
    model = build_model(variant="faithful", width=4, in_size=16, out_size=64, head=head).eval()
    _randomise_head(model)
    x1, x2 = torch.randn(3, 1, 16, 16), torch.randn(5, 1, 16, 16)
    with torch.inference_mode():
        first = model(x1)
        kept = first.clone()
    with torch.no_grad():
        second = model(x2)
        again = model(x1)
    torch.testing.assert_close(first, kept)  # not overwritten by the later calls
    torch.testing.assert_close(again, kept)
    model.auto_fold = False
    want = torch.cat([model(x1), model(x2)]).detach()  # autograd on: fresh tensors, as trained
    torch.testing.assert_close(torch.cat([first, second]), want, rtol=1e-4, atol=1e-5)


def test_inference_buffers_are_per_thread(kept_buffers):
    """Concurrent callers of one model never share an intermediate buffer."""
    from concurrent.futures import ThreadPoolExecutor

    model = build_model(variant="faithful", width=4, in_size=16, out_size=64, head="subpixel").eval()
    _randomise_head(model)
    inputs = [torch.randn(4, 1, 16, 16) for _ in range(8)]
    with torch.no_grad():
        want = [model(x) for x in inputs]

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return [model(x) for _ in range(20)][-1]

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, inputs))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_neighbourhoods_in_eager_mode_and_for_export_agree(radius, padding, monkeypatch):
    """One unfold in eager mode, Pad/Slice/Concat for export: both give every pixel's window in
    unfold's order, padded as asked (checked against an explicit loop)."""
    from jnet.models import blocks

    x = torch.randn(2, 3, 5, 6)
    d = 2 * radius + 1
    mode = "constant" if padding == "zeros" else "replicate"
    padded = torch.nn.functional.pad(x, (radius,) * 4, mode=mode)
    want = torch.stack([padded[:, :, dy:dy + 5, dx:dx + 6] for dy in range(d) for dx in range(d)], 2)
    want = want.reshape(2, 3 * d * d, 30)
    torch.testing.assert_close(blocks.neighbourhoods(x, radius, padding), want, rtol=0, atol=0)
    monkeypatch.setattr(blocks, "tracing", lambda: True)
    torch.testing.assert_close(blocks.neighbourhoods(x, radius, padding), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="reflect"):
        blocks.neighbourhoods(x, radius, "reflect")
