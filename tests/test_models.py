"""lib.models: structure matches torchvision, initialisation follows experiments.md, seeds work."""
import math

import pytest
import torch
import torchvision
from torch import nn

from lib.models import build_model, prunable_layers


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("arch", ["resnet34", "vgg16"])
def test_same_seed_gives_identical_weights_and_different_seed_does_not(arch):
    a = build_model(arch, width=0.25, seed=7)
    b = build_model(arch, width=0.25, seed=7)
    c = build_model(arch, width=0.25, seed=8)
    assert _same_state(a, b)
    assert not _same_state(a, c)


def test_seeded_build_leaves_global_rng_alone_and_seed_none_uses_it():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("resnet34", width=0.25, seed=1)
    assert torch.equal(torch.rand(3), expected)

    torch.manual_seed(5)
    a = build_model("vgg16", width=0.125, seed=None)
    torch.manual_seed(5)
    b = build_model("vgg16", width=0.125, seed=None)
    torch.manual_seed(6)
    c = build_model("vgg16", width=0.125, seed=None)
    assert _same_state(a, b) and not _same_state(a, c)


@pytest.mark.parametrize("arch", ["resnet34", "vgg16"])
def test_initialisation_statistics(arch):
    model = build_model(arch, width=0.25, seed=0)
    n_bn = n_conv = n_lin = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            n_bn += 1
            assert torch.all(m.weight == 0.5) and torch.all(m.bias == 0)
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
            assert int(m.num_batches_tracked) == 0
        elif isinstance(m, nn.Conv2d):
            n_conv += 1
            if m.bias is not None:
                assert torch.all(m.bias == 0)
            w = m.weight.detach().double()
            if w.numel() >= 20_000:  # enough draws for a tight estimate
                kh, kw = m.kernel_size
                expected = math.sqrt(2.0 / (kh * kw * m.out_channels))
                assert w.std().item() == pytest.approx(expected, rel=0.03), name
                assert abs(w.mean().item()) < 0.03 * expected, name
        elif isinstance(m, nn.Linear):
            n_lin += 1
            assert torch.all(m.bias == 0)
            if m.weight.numel() >= 20_000:  # 0.01 at width 1, scaled by 1/sqrt(width)
                assert m.weight.detach().double().std().item() == pytest.approx(0.02, rel=0.03), name
    assert n_bn > 0 and n_conv > 0 and n_lin > 0


@pytest.mark.parametrize(
    "arch, reference",
    [("resnet34", torchvision.models.resnet34), ("vgg16", torchvision.models.vgg16_bn)],
)
def test_width_one_matches_torchvision_names_shapes_and_parameter_count(arch, reference):
    model = build_model(arch, num_classes=10, seed=0)
    with torch.device("meta"):
        tv = reference(num_classes=10)
    ours, theirs = model.state_dict(), tv.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(tv)
    assert count(model) == {"resnet34": 21_289_802, "vgg16": 134_309_962}[arch]
    if arch == "resnet34":  # our BasicBlock computes what torchvision's does
        tv = reference(num_classes=10)
        tv.load_state_dict(ours)
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        model.train(), tv.train()
        assert torch.equal(model(x), tv(x))


def test_resnet_without_skips_has_no_downsample_and_blocks_have_no_residual():
    model = build_model("resnet34", skip=False, width=0.25, seed=0).eval()
    names = [n for n, _ in model.named_modules()]
    assert not any("downsample" in n for n in names)
    with_skip = build_model("resnet34", skip=True, width=0.25, seed=0)
    n_downsample = sum(p.numel() for n, p in with_skip.named_parameters() if "downsample" in n)
    assert n_downsample > 0
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in with_skip.parameters()) - n_downsample
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    block, x = model.layer1[0], torch.randn(2, 16, 8, 8)
    expected = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))  # spec: no ReLU after it
    assert torch.allclose(block(x), expected) and (block(x) < 0).any()
    skip_block = with_skip.eval().layer1[0]
    assert not torch.allclose(skip_block(x), torch.relu(skip_block.bn2(skip_block.conv2(torch.relu(skip_block.bn1(skip_block.conv1(x)))))))


def test_width_scales_channels_but_not_depth():
    r = build_model("resnet34", width=0.5, seed=0)
    assert r.conv1.out_channels == 32 and r.layer4[2].conv2.out_channels == 256 and r.fc.in_features == 256
    assert [len(getattr(r, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    v = build_model("vgg16", width=0.5, seed=0)
    assert v.features[0].out_channels == 32 and v.features[40].out_channels == 256
    assert v.classifier[0].in_features == 256 * 49 and v.classifier[0].out_features == 2048
    assert v.classifier[3].out_features == 2048
    tiny = build_model("resnet34", width=0.001, seed=0).eval()
    assert tiny.conv1.out_channels == 1 and tiny(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert len(prunable_layers(r)) == len(prunable_layers(build_model("resnet34", seed=0)))


def test_in_channels_and_num_classes():
    r = build_model("resnet34", num_classes=100, in_channels=1, width=0.25, seed=0).eval()
    assert r.conv1.in_channels == 1 and r.fc.out_features == 100
    assert r(torch.randn(2, 1, 32, 32)).shape == (2, 100)
    v = build_model("vgg16", num_classes=100, in_channels=1, width=0.125, seed=0).eval()
    assert v.features[0].in_channels == 1 and v(torch.randn(2, 1, 32, 32)).shape == (2, 100)


def test_unknown_arch_and_bad_options_raise_one_line_errors():
    with pytest.raises(ValueError, match="resnet34, vgg16") as err:
        build_model("resnet50")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="width"):
        build_model("resnet34", width=0)
    with pytest.raises(ValueError, match="resnet34 only"):
        build_model("vgg16", skip=False)


def test_prunable_layers_are_every_conv_and_linear_in_model_order():
    r = build_model("resnet34", width=0.25, seed=0)
    layers = prunable_layers(r)
    names = list(layers)
    assert len(names) == 37  # stem + 32 block convs + 3 downsample convs + fc
    assert names[0] == "conv1" and names[-1] == "fc"
    assert "layer2.0.downsample.0" in names and "layer1.0.conv1" in names
    assert names == [n for n, m in r.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    v = prunable_layers(build_model("vgg16", width=0.25, seed=0))
    assert list(v)[0] == "features.0" and list(v)[-3:] == ["classifier.0", "classifier.3", "classifier.6"]
    assert len(v) == 16
    assert not any(isinstance(m, nn.BatchNorm2d) for m in v.values())


def test_narrow_models_keep_the_linear_layers_signal_gain():
    # width 1 is the spec's N(0, 0.01); a narrower model keeps fan-in x variance per Linear.
    full = build_model("resnet34", width=1.0, seed=3).fc.weight.detach().double()
    narrow = build_model("resnet34", width=0.25, seed=3).fc.weight.detach().double()
    assert full.std().item() == pytest.approx(0.01, rel=0.05)
    gain = [w.shape[1] * w.var().item() for w in (full, narrow)]
    assert gain[1] == pytest.approx(gain[0], rel=0.1)


def test_meta_model_has_the_names_and_shapes_without_weights():
    meta = build_model("vgg16", width=0.25, meta=True)
    real = build_model("vgg16", width=0.25, seed=0)
    assert {n: m.weight.shape for n, m in prunable_layers(meta).items()} == {
        n: m.weight.shape for n, m in prunable_layers(real).items()}
    assert all(p.is_meta for p in meta.parameters())
