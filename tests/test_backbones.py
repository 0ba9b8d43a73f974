import pytest
import torch
from torch import nn
from torch.func import functional_call

from benchmark.kit.backbones import BACKBONES, build_backbone, channels_last, convs, explicit_batchnorm, feature_shape


@pytest.mark.parametrize("name,shape,expected", [
    ("conv4", (1, 28, 28), (64,)), ("conv4-32", (3, 84, 84), (32 * 5 * 5,)), ("conv4-strided", (1, 28, 28), (64 * 2 * 2,)),
    ("resnet12-narrow", (1, 28, 28), (256,)), ("resnet12", (3, 84, 84), (640,)),
])
def test_feature_shapes(name, shape, expected):
    net = build_backbone(name, shape[0])
    assert feature_shape(net, shape) == expected


def test_channels_last_layouts():
    gray, rgb = torch.randn(4, 1, 6, 6), torch.randn(4, 3, 6, 6)
    assert channels_last(gray) is gray  # one channel already counts as channels-last: left as it is by default
    fixed = channels_last(gray, restride_single_channel=True)
    assert fixed.stride() == (36, 1, 6, 1) and torch.equal(fixed, gray)  # a copy with true channels-last strides
    assert channels_last(fixed, restride_single_channel=True) is fixed
    for restride in (False, True):
        out = channels_last(rgb, restride_single_channel=restride)
        assert out.stride() == (108, 1, 18, 3) and torch.equal(out, rgb)

    def inside(x):  # vmap cannot set a memory format: the helper hands the batched tensor back unchanged
        assert channels_last(x) is x and channels_last(x, restride_single_channel=True) is x
        return x * 2
    x = torch.randn(2, 4, 1, 6, 6)
    torch.testing.assert_close(torch.func.vmap(inside)(x), x * 2)


def test_spatial_variants():
    assert feature_shape(build_backbone("conv4", 1, keep_spatial=True), (1, 28, 28)) == (64, 3, 3)
    assert feature_shape(build_backbone("conv4-relation", 1, keep_spatial=True), (1, 28, 28)) == (64, 7, 7)
    assert feature_shape(build_backbone("resnet12-narrow", 3, keep_spatial=True), (3, 84, 84)) == (256, 5, 5)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg", 1)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_functional_call_matches_module(name):
    torch.manual_seed(0)
    net = build_backbone(name, 1, bn_running_stats=False)
    x = torch.randn(4, 1, 28, 28)
    params = {k: v * 1.5 for k, v in net.named_parameters()}
    out = functional_call(net, params, (x,))
    with torch.no_grad():
        for k, v in net.named_parameters():
            v.mul_(1.5)
    torch.testing.assert_close(out, net(x))


class Scale(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(conv.out_channels, conv.in_channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(conv.out_channels))

    def forward(self, w, b):
        return w * self.scale, self.shift if b is None else b + self.shift


def test_conv_modulator_hook():
    torch.manual_seed(0)
    net = build_backbone("resnet12-narrow", 1).eval()
    x = torch.randn(2, 1, 28, 28)
    ref = net(x)
    for _, c in convs(net):
        c.modulator = Scale(c)
    torch.testing.assert_close(net(x), ref)  # identity modulation
    assert any("modulator.scale" in n for n, _ in net.named_parameters())
    with torch.no_grad():
        for _, c in convs(net):
            c.modulator.scale.mul_(2.0)
    assert not torch.allclose(net(x), ref)


def test_film_hook():
    torch.manual_seed(0)
    for name in ("conv4", "resnet12-narrow"):
        net = build_backbone(name, 1).eval()
        x = torch.randn(3, 1, 28, 28)
        ident = [(torch.ones(c), torch.zeros(c)) for c in net.film_channels]
        torch.testing.assert_close(net(x, film=ident), net(x))
        shifted = [(torch.ones(c), torch.full((c,), 0.5)) for c in net.film_channels]
        assert not torch.allclose(net(x, film=shifted), net(x))
        per_sample = [(torch.ones(3, c), torch.zeros(3, c)) for c in net.film_channels]
        torch.testing.assert_close(net(x, film=per_sample), net(x))


@pytest.mark.parametrize("name", ["conv4", "conv4-strided", "resnet12-narrow"])
def test_explicit_batchnorm_whole_batch_and_in_groups(name):
    """group=None reproduces BatchNorm over the batch; group=g equals one forward pass per run of g images."""
    torch.manual_seed(0)
    net = build_backbone(name, 1, bn_running_stats=False).double()
    for m in net.modules():  # non-trivial affine parameters
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    x = torch.randn(12, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        plain = net(x)
        separate = torch.cat([net(chunk) for chunk in x.split(4)])
        with explicit_batchnorm(net):
            whole = net(x)
        with explicit_batchnorm(net, group=4):
            grouped = net(x)
        after = net(x)
    torch.testing.assert_close(whole, plain)
    torch.testing.assert_close(grouped, separate)
    assert not torch.allclose(grouped, plain, atol=1e-3)  # the groups' statistics really differ from the batch's
    torch.testing.assert_close(after, plain)  # the BatchNorm layers are restored on exit
