"""lib.pruning: exact global counts, seeds, ERK, the scores against independent re-computations,
masks on models, validation messages, saving, and the layer-collapse warning.

Small models (width 0.125 ResNet-34, a 3-layer conv net) are used wherever a property does not
depend on size; full size only for ERK's realised density (cheap: no forward pass). The
full-size SynFlow runs (minutes on 2 CPU cores) are gated behind RUN_SLOW=1.
"""
import copy
import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib import kernels, pruning
from lib.models import build_model, prunable_layers
from lib.pruning import (
    METHODS,
    LayerCollapseWarning,
    apply_masks,
    compute_masks,
    empty_layers,
    erk_densities,
    erk_masks,
    global_mask,
    kept_count,
    layer_densities,
    load_masks,
    masks_from_scores,
    masks_of,
    overall_density,
    prune,
    remove_masks,
    save_masks,
    score,
    validate_masks,
)

# Small models collapse layers at low density; the warning itself is tested explicitly below.
pytestmark = pytest.mark.filterwarnings("ignore::lib.pruning.LayerCollapseWarning")

SCORED = ["Rand", "SNIP", "GraSP", "SynFlow", "iterSNIP"]
FAST = {"SynFlow": {"rounds": 20, "progress": False}, "iterSNIP": {"rounds": 5, "progress": False}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models run as fast on one thread, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(seed=0):
    return build_model("resnet34", width=0.125, seed=seed)


def tiny():
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 10),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        model[1].running_mean.copy_(torch.randn(4, generator=gen) * 0.1)
        model[1].running_var.copy_(torch.rand(4, generator=gen) + 0.5)
    return model


def batches(n=2, size=4, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, channels, 32, 32, generator=gen), torch.randint(0, 10, (size,), generator=gen)) for _ in range(n)]


def n_weights(model):
    return sum(m.weight.numel() for m in prunable_layers(model).values())


def kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def same_masks(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def reference_top_k(scores, density):
    """Independent global top-k: a full stable sort, ties to the earlier position."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).double() for n in names])
    k = math.floor(density * flat.numel())
    order = torch.sort(-flat, stable=True).indices[:k]
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order] = True
    out, start = {}, 0
    for n in names:
        c = scores[n].numel()
        out[n] = keep[start : start + c].view(scores[n].shape)
        start += c
    return out


# ------------------------------------------------------------------------------- counts, seeds


@pytest.mark.parametrize("method", SCORED)
def test_score_based_methods_keep_exactly_floor_p_n(method):
    model = small()
    n = n_weights(model)
    for density in (0.013, 0.2):
        masks = prune(model, method, density, batches=batches(), seed=0, **FAST.get(method, {}))
        assert kept(masks) == math.floor(density * n) == kept_count(n, density)
        assert list(masks) == list(prunable_layers(model))
        assert all(m.dtype == torch.bool and m.device.type == "cpu" for m in masks.values())
        assert all(masks[k].shape == mod.weight.shape for k, mod in prunable_layers(model).items())


@pytest.mark.parametrize("method", ["Rand", "ERK"])
def test_random_methods_are_deterministic_by_seed(method):
    model = small()
    a = prune(model, method, 0.1, seed=1)
    b = prune(model, method, 0.1, seed=1)
    c = prune(model, method, 0.1, seed=2)
    assert same_masks(a, b) and not same_masks(a, c)


@pytest.mark.parametrize("method", ["SNIP", "GraSP", "SynFlow", "iterSNIP"])
def test_deterministic_methods_repeat_exactly(method):
    model = small()
    a = prune(model, method, 0.05, batches=batches(), **FAST.get(method, {}))
    b = prune(small(), method, 0.05, batches=batches(), **FAST.get(method, {}))
    assert same_masks(a, b)


@pytest.mark.parametrize("method", ["Rand", "ERK"])
def test_random_masks_are_independent_of_the_initial_weights(method):
    """Rand and ERK keep a random set of weights, not a set chosen by their values.

    Both draw from a generator seeded with the run's seed, as does the initialisation: were
    they the same stream, Rand's scores would *be* the weights (keeping the largest ones,
    a strong positive bias) and ERK's uniforms would be tied to them too.
    """
    model = build_model("resnet34", width=0.25, seed=1)
    # each layer in units of its own standard deviation (layers are drawn with different ones)
    weights = {n: m.weight.detach() / m.weight.detach().std() for n, m in prunable_layers(model).items()}
    masks = prune(model, method, 0.4, seed=1)
    kept = torch.cat([weights[n][masks[n]] for n in masks])
    pruned = torch.cat([weights[n][~masks[n]] for n in masks])
    # ~500k kept weights: an unbiased sample's mean is within 0.01 of 0 (7 sigma); the shared
    # stream gave Rand a kept mean of about +0.5.
    assert abs(kept.mean().item()) < 0.01 and abs(pruned.mean().item()) < 0.01
    assert kept.abs().mean().item() == pytest.approx(pruned.abs().mean().item(), rel=0.02)


def test_global_mask_matches_full_sort_with_ties_on_a_large_vector():
    gen = torch.Generator().manual_seed(0)
    # > 4M values takes the sampled-threshold path; integer values make many ties.
    scores = {
        "a": torch.randint(0, 500, (2000, 1000), generator=gen).float(),
        "b": torch.randint(0, 500, (3000, 1000), generator=gen).float(),
    }
    scores["b"][:5] = -math.inf
    for density in (0.001, 0.05, 0.4, 0.999):
        masks = global_mask(scores, density)
        assert kept(masks) == math.floor(density * 5_000_000)
        assert same_masks(masks, reference_top_k(scores, density))
    # SynFlow's scores: most weights removed (-inf); the threshold just above, at, or in the -inf mass
    alive = torch.rand(2_000_000, generator=gen) < 0.06
    flat = torch.where(alive, torch.randint(0, 1000, (2_000_000,), generator=gen).double(), -math.inf)
    scores = {"a": flat[:1_000_000].view(1000, 1000), "b": flat[1_000_000:].view(1000, 1000)}
    finite = int(alive.sum())
    for density in (0.05, (finite - 7) / 2_000_000, finite / 2_000_000, 0.07):
        masks = global_mask(scores, density)
        assert kept(masks) == math.floor(density * 2_000_000)
        assert same_masks(masks, reference_top_k(scores, density))


def test_global_mask_ties_keep_earliest_and_density_one_keeps_all():
    scores = {"x": torch.ones(2, 3), "y": torch.ones(4)}
    masks = global_mask(scores, 0.6)
    assert masks["x"].all() and not masks["y"].any()
    masks = global_mask(scores, 0.5)
    assert masks["x"].flatten().tolist() == [True] * 5 + [False] and not masks["y"].any()
    masks = masks_from_scores({"x": torch.zeros(10), "y": torch.arange(10.0)}, 0.3)
    assert masks["y"].tolist() == [False] * 4 + [True] * 6 and not masks["x"].any()
    assert all(m.all() for m in global_mask(scores, 1.0).values())
    with pytest.raises(ValueError, match="NaN"):
        global_mask({"x": torch.tensor([1.0, float("nan")])}, 0.5)


# --------------------------------------------------------------------------------------- ERK


def test_erk_densities_follow_the_formula_when_no_layer_saturates():
    shapes = {"c1": (64, 64, 3, 3), "c2": (128, 64, 3, 3), "fc": (10, 128)}
    p = 0.02
    n = {k: math.prod(s) for k, s in shapes.items()}
    eps = p * sum(n.values()) / sum(sum(s) for s in shapes.values())  # sum_l eps*sum(dims_l) = p*N
    expected = {k: eps * sum(s) / n[k] for k, s in shapes.items()}
    assert all(v < 1 for v in expected.values())
    got = erk_densities(shapes, p)
    assert got == pytest.approx(expected, rel=1e-12)
    assert sum(got[k] * n[k] for k in n) == pytest.approx(p * sum(n.values()))


def test_erk_densities_make_saturating_layers_dense_and_resolve():
    shapes = {"stem": (16, 3, 3, 3), "big": (256, 256, 3, 3), "fc": (10, 256)}
    p = 0.3
    n = {k: math.prod(s) for k, s in shapes.items()}
    naive = p * sum(n.values()) / sum(sum(s) for s in shapes.values())
    assert naive * sum(shapes["stem"]) / n["stem"] > 1  # the stem would exceed 1
    got = erk_densities(shapes, p)
    assert got["stem"] == 1.0
    assert all(0 < v <= 1 for v in got.values())
    rest = [k for k in shapes if got[k] < 1]
    eps = (p * sum(n.values()) - sum(n[k] for k in shapes if got[k] == 1)) / sum(sum(shapes[k]) for k in rest)
    for k in rest:
        assert got[k] == pytest.approx(eps * sum(shapes[k]) / n[k], rel=1e-12)
    assert sum(got[k] * n[k] for k in n) == pytest.approx(p * sum(n.values()))
    assert all(v == 1.0 for v in erk_densities(shapes, 1.0).values())


@pytest.mark.parametrize("density", [0.01, 0.05, 0.4])
def test_erk_realised_density_on_full_size_resnet34(density):
    model = build_model("resnet34", seed=0)
    masks = erk_masks(model, density, seed=3)
    assert overall_density(masks) == pytest.approx(density, rel=0.01)
    dens = erk_densities(model, density)
    big = max(masks, key=lambda k: masks[k].numel())
    assert layer_densities(masks)[big] == pytest.approx(dens[big], rel=0.05)


# ------------------------------------------------------------------- scores, independently


def test_snip_scores_match_an_independent_computation():
    model, data = tiny(), batches()
    ref = copy.deepcopy(model).eval()
    for x, y in data:
        F.cross_entropy(ref(x), y).backward()  # gradients accumulate over the batches
    raw = {k: (m.weight.grad * m.weight.detach()).abs() for k, m in prunable_layers(ref).items()}
    total = sum(float(v.sum()) for v in raw.values())
    got = score(model, "SNIP", data)
    for k in raw:
        assert torch.allclose(got[k], raw[k] / total, rtol=1e-4, atol=1e-9)
    assert sum(float(v.sum()) for v in got.values()) == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch.func internals
def test_grasp_scores_match_an_independent_hessian_gradient_product():
    model, data = tiny(), batches()
    ref = copy.deepcopy(model).eval()
    ws = [m.weight for m in prunable_layers(ref).values()]
    flat = torch.cat([w.detach().reshape(-1) for w in ws])
    shapes = [w.shape for w in ws]

    def loss_of(v, x, y):
        params, start = {}, 0
        for (k, m), s in zip(prunable_layers(ref).items(), shapes):
            c = math.prod(s)
            params[f"{k}.weight"] = v[start : start + c].view(s)
            start += c
        return F.cross_entropy(torch.func.functional_call(ref, params, (x,)) / 200.0, y)

    g = sum(torch.func.grad(loss_of)(flat, x, y) for x, y in data)
    hg = sum(torch.func.jvp(lambda v: torch.func.grad(loss_of)(v, x, y), (flat,), (g,))[1] for x, y in data)
    raw = hg * flat
    expected = (raw / raw.sum().abs()).detach()
    got = torch.cat([v.reshape(-1) for v in score(model, "GraSP", data).values()])
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-6 * float(expected.abs().max()))
    # the reference keeps the LARGEST (Hg)*w (not the largest magnitude)
    keep = torch.cat([m.reshape(-1) for m in global_mask(score(model, "GraSP", data), 0.3).values()])
    assert int(keep.sum()) == math.floor(0.3 * got.numel())
    assert got[keep].min() >= got[~keep].max()


def synflow_reference(model, density, rounds, readout="sum", input_shape=(3, 32, 32), dtype=torch.float32):
    """SynFlow written plainly: a |copy| in ``dtype``, masks multiplied in, full-sort selection."""
    ref = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        for t in ref.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    layers = prunable_layers(ref)
    w0 = {k: m.weight.detach().clone() for k, m in layers.items()}
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in w0.items()}
    for r in range(1, rounds + 1):
        for k, m in layers.items():
            m.weight = nn.Parameter(w0[k] * masks[k])
        ref.zero_grad()
        out = ref(torch.ones(1, *input_shape, dtype=dtype))
        (out.sum() if readout == "sum" else F.log_softmax(out, dim=1).sum()).backward()
        scores = {k: torch.where(masks[k], (m.weight.grad * m.weight).abs(), -math.inf) for k, m in layers.items()}
        masks = reference_top_k(scores, density ** (r / rounds))
    return masks


def test_synflow_matches_a_plain_reimplementation():
    model = tiny()
    got = prune(model, "SynFlow", 0.05, rounds=10, progress=False)
    assert same_masks(got, synflow_reference(tiny(), 0.05, 10))


class SharedLinear(nn.Module):
    """A Linear layer run twice and one fed a 3-D input: their scores need the weight gradient."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.a, self.b, self.c = nn.Linear(12, 12), nn.Linear(4, 4), nn.Linear(12, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x):
        h = torch.relu(self.a(torch.relu(self.a(x.flatten(1)))))
        h = self.b(h.view(1, 3, 4)).reshape(1, 12)
        return self.c(h)


# Small sample sizes make the sampled-bracket paths (and their retries: zero sigmas) run on
# small models; _LIST_BELOW near 1 scans Linear layers through alive lists (and rebuilds them).
SELECTION_PATHS = [
    {"_ROUND_SAMPLE": 300, "_SIGMAS": 6.0, "_LIST_BELOW": 0.9},
    {"_ROUND_SAMPLE": 200, "_SIGMAS": 0.0, "_LIST_BELOW": 0.5},
]


@pytest.mark.parametrize("paths", SELECTION_PATHS)
@pytest.mark.parametrize(
    "arch, density, rounds",
    [("resnet34", 0.01, 12), ("resnet34", 0.2, 3), ("vgg16", 0.01, 12), ("vgg16", 0.05, 4)],
)
def test_synflow_masks_equal_a_plain_reimplementation_on_small_models(monkeypatch, paths, arch, density, rounds):
    # ResNet-34's layer4 runs at 1x1: 8 of 9 kernel taps score exactly 0, so early thresholds
    # sit inside a large tie (ties go to the earliest position); VGG-16's classifier is Linear.
    for name, value in paths.items():
        monkeypatch.setattr(pruning, name, value)
    width = 0.125 if arch == "resnet34" else 0.0625
    model = build_model(arch, width=width, seed=1)
    got = compute_masks(model, "SynFlow", density, rounds=rounds, progress=False)
    assert kept(got) == math.floor(density * n_weights(model))
    assert same_masks(got, synflow_reference(model, density, rounds))


@pytest.mark.parametrize("readout", ["sum", "log_softmax"])
def test_synflow_on_linear_layers_run_twice_on_3d_inputs_or_first(readout):
    model = SharedLinear()
    got = compute_masks(model, "SynFlow", 0.3, rounds=4, progress=False, readout=readout, input_shape=(12,))
    assert same_masks(got, synflow_reference(model, 0.3, 4, readout, input_shape=(12,)))
    gen = torch.Generator().manual_seed(4)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 10))  # nothing before the first Linear needs grad
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    got = compute_masks(mlp, "SynFlow", 0.2, rounds=3, progress=False, readout=readout)
    assert same_masks(got, synflow_reference(mlp, 0.2, 3, readout, input_shape=(12,)))


class SmallOutputs(nn.Module):
    """Convolutions at batch 1 to 1x1 and 2x2 outputs (scored from their output gradient and
    unfolded input: no weight gradient) beside one that is grouped and one to a 3x3 output
    (they keep their gradient); the first has nothing upstream that takes a gradient, so the
    input must take one."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.a = nn.Conv2d(3, 6, 3)  # 3x3 -> 1x1
        self.b = nn.Conv2d(6, 8, 3, padding=1)  # 1x1 -> 1x1: 8 of 9 taps see the padding
        self.c = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.d = nn.Conv2d(8, 4, 1)
        self.e = nn.Conv2d(4, 6, 2, padding=1)  # 1x1 -> 2x2: 4 products a weight, one of them nonzero
        self.h = nn.Conv2d(6, 5, 3, stride=2, padding=2)  # 2x2 -> 2x2, strided
        self.f = nn.Conv2d(5, 5, 3, padding=1)  # 2x2 -> 2x2: 4 products, each tap in up to 4 windows
        self.g = nn.Conv2d(5, 4, 2, padding=1)  # 2x2 -> 3x3: 9 products, beyond _WINDOW_TERMS
        self.fc = nn.Linear(36, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        h = torch.relu(self.h(torch.relu(self.e(torch.relu(self.d(self.c(h)))))))
        return self.fc(torch.relu(self.g(torch.relu(self.f(h)))).flatten(1))


def synflow_round_one(model, readout, shape) -> dict[str, torch.Tensor]:
    """SynFlow's first-round scores by plain autograd: |w dR/dw| of the abs-valued network at input 1."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t in ref.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    out = ref(torch.ones(1, *shape))
    (out.sum() if readout == "sum" else F.log_softmax(out, dim=1).sum()).backward()
    return {k: (m.weight * m.weight.grad).abs() for k, m in prunable_layers(ref).items()}


def conv_inputs(model, shape=(1, 3, 32, 32)) -> dict[str, tuple[tuple[int, ...], nn.Conv2d]]:
    """Each convolution's input shape in one forward pass, beside the module."""
    seen, model = {}, copy.deepcopy(model).eval()  # batch norm at batch 1 and a 1x1 output: eval
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (tuple(i[0].shape), m)))
    with torch.no_grad():
        model(torch.ones(shape))
    return seen


@pytest.mark.parametrize("readout", ["sum", "log_softmax"])
def test_synflow_scores_convolutions_at_small_outputs_without_their_weight_gradient(monkeypatch, readout):
    taps = []

    class Spy(pruning._OuterTaps):
        def __init__(self, modules):
            super().__init__(modules)
            taps.append(self)

    monkeypatch.setattr(pruning, "_OuterTaps", Spy)
    model = SmallOutputs()
    got = compute_masks(model, "SynFlow", 0.3, rounds=4, progress=False, readout=readout, input_shape=(3, 3, 3))
    assert taps[-1].tapped == {"a", "b", "d", "e", "f", "h", "fc"}
    assert same_masks(got, synflow_reference(model, 0.3, 4, readout, input_shape=(3, 3, 3)))
    resnet = build_model("resnet34", width=0.0625, seed=1)  # layer3 runs at 2x2 and layer4 at 1x1 from 32x32
    got = compute_masks(resnet, "SynFlow", 0.1, rounds=3, progress=False, readout=readout)
    # layer3 runs at 2x2: its convolutions whose weight gradient the BLAS sums as the kernels do
    # (MKL here: not its 8-to-16-channel downsample; on MKL every 3x3 one, see the test below)
    summed = {n for n, (x, m) in conv_inputs(resnet).items()
              if n.startswith("layer3.") and pruning._conv_sums_as_fma(m, x, torch.float32)}
    assert taps[-1].tapped == {n for n in prunable_layers(resnet) if n.startswith("layer4.")} | {"fc"} | summed
    assert same_masks(got, synflow_reference(resnet, 0.1, 3, readout))

    # round 1's scores are autograd's |w dR/dw|; log_softmax's output gradient has either sign
    # (at SmallOutputs' f, whose windows overlap), so a 2x2 layer's products are summed with
    # their signs, then made >= 0.
    # Bit for bit in ResNet-34; SmallOutputs' weights lie in lib's flat buffer at offsets that
    # are not 64-byte aligned, where MKL's forward rounds some sums 1 ulp apart (as before 86a627c)
    got = score(resnet, "SynFlow", density=0.5, rounds=1, progress=False, readout=readout)
    expected = synflow_round_one(resnet, readout, (3, 32, 32))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    got = score(model, "SynFlow", density=0.5, rounds=1, progress=False, readout=readout, input_shape=(3, 3, 3))
    expected = synflow_round_one(model, readout, (3, 3, 3))
    assert all(torch.allclose(got[k], expected[k], rtol=1e-5, atol=0) for k in expected)

    # where the BLAS sums otherwise, convolutions to more than one position keep their gradient
    monkeypatch.setattr(pruning, "_sums_as_fma", lambda *args: False)
    got = compute_masks(model, "SynFlow", 0.3, rounds=4, progress=False, readout=readout, input_shape=(3, 3, 3))
    assert taps[-1].tapped == {"a", "b", "d", "fc"}
    assert same_masks(got, synflow_reference(model, 0.3, 4, readout, input_shape=(3, 3, 3)))


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="checks MKL's sgemm")
def test_mkl_sums_the_weight_gradient_of_resnet34s_layer3_as_the_kernels_do():
    # full size at 32x32 (layer3's 3x3 convolutions: 32% of ResNet-34's weights), and SmallOutputs'
    # 2x2 layers; where this fails, they keep their gradient (correct, slower)
    for x_shape, w_shape, stride in [((1, 256, 2, 2), (256, 256, 3, 3), (1, 1)), ((1, 128, 4, 4), (256, 128, 3, 3), (2, 2)),
                                     ((1, 4, 1, 1), (6, 4, 2, 2), (1, 1))]:
        assert pruning._sums_as_fma(x_shape, w_shape, stride, (1, 1), (1, 1), torch.float32, torch.get_num_threads())
    # a planted error: the products summed last to first
    w = torch.rand(256, 256, 3, 3)
    x, g = F.unfold(torch.rand(1, 256, 2, 2), 3, padding=1)[0].T.contiguous(), torch.rand(256, 4)
    forward, backward = np.empty(w.numel(), np.float32), np.empty(w.numel(), np.float32)
    ones, alive = np.ones(w.numel(), np.float32), np.ones(w.numel(), np.uint8)
    kernels.write_outer(g.numpy(), x.numpy(), ones, alive, forward)
    kernels.write_outer(g.numpy()[:, ::-1].copy(), x.numpy()[::-1].copy(), ones, alive, backward)
    expected = (g @ x).reshape(-1).numpy()  # MKL's sgemm, as autograd's convolution uses it
    assert np.array_equal(forward, expected) and not np.array_equal(backward, expected)


def test_synflow_log_softmax_readout_scores_match_autograd_in_round_one():
    model = tiny()
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t in ref.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    F.log_softmax(ref(torch.ones(1, 3, 32, 32)), dim=1).sum().backward()
    expected = {k: (m.weight * m.weight.grad).abs() for k, m in prunable_layers(ref).items()}
    got = score(model, "SynFlow", density=0.5, rounds=1, progress=False, readout="log_softmax")
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], expected[k]) for k in expected)  # float32, as the authors'

    # not the sum readout: log_softmax's gradient (1 - 10 softmax) has either sign
    plain = score(model, "SynFlow", density=0.5, rounds=1, progress=False)
    assert not all(torch.allclose(got[k], plain[k]) for k in got)
    masks = compute_masks(model, "SynFlow", 0.1, rounds=5, progress=False, readout="log_softmax")
    assert same_masks(masks, synflow_reference(model, 0.1, 5, "log_softmax"))


def test_synflow_readout_must_be_sum_or_log_softmax():
    for call in (
        lambda: prune(tiny(), "SynFlow", 0.1, readout="softmax", progress=False),
        lambda: score(tiny(), "SynFlow", density=0.1, readout="mean", progress=False),
    ):
        with pytest.raises(ValueError, match="readout must be 'sum' .* or 'log_softmax'") as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="readout"):
        prune(tiny(), "SNIP", 0.1, batches=batches(), readout="sum")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_survivors_drop_exactly_the_lowest_alive_with_ties_to_the_latest(monkeypatch, dtype):
    """The removal step against a stable sort, on scores full of ties, with lists and retries."""
    monkeypatch.setattr(pruning, "_ROUND_SAMPLE", 200)  # 2,100 weights: sampled brackets (and the tie path) run
    monkeypatch.setattr(pruning, "_COLLECT", 7)  # the compiled loops stop and resume many times
    gen = torch.Generator().manual_seed(0)
    few = lambda *shape: torch.randint(0, 6, shape, generator=gen).to(dtype)  # a few values: heavy ties
    one = lambda *shape: torch.ones(shape, dtype=dtype)  # one big tie: the threshold inside it
    cases = [  # (conv weight gradient, fc weights, fc output gradient, fc input), sigmas, list threshold
        ((few(100, 3, 3) - 2, few(40, 30), few(40) % 3, few(30) % 2 + 1), 6.0, 0.9),  # g zeros: rows tie at 0
        ((few(100, 3, 3) - 2, few(40, 30), few(40) % 3, few(30) % 2 + 1), 0.0, 1.0),
        ((few(100, 3, 3), few(40, 30), few(40) % 3, few(30) % 2 + 1), 6.0, 0.0),
        ((one(100, 3, 3), one(40, 30), one(40), one(30)), 6.0, 1.0),
        ((one(100, 3, 3), one(40, 30), one(40), one(30)), 6.0, 0.0),
        # the fc input repeats over runs of 5 columns (scanned by sorted runs), ties within runs
        ((few(100, 3, 3) - 2, few(40, 30), few(40) % 3, few(6).repeat_interleave(5) + 1), 6.0, 0.9),
        ((few(100, 3, 3), few(40, 30), few(40) % 3 + 1, few(6).repeat_interleave(5) + 1), 0.0, 0.0),
        ((one(100, 3, 3), one(40, 30), one(40), one(30)), 6.0, 0.9),
        # a sum of 3 products a weight (a convolution to 3 output positions): integers, exact in any
        # order; the conv's scores are multiples of 3, tying with the fc's across the two layers
        ((few(100, 3, 3) * 3, few(40, 30), few(40, 3) % 3 + 1, few(3, 30) % 2 + 1), 6.0, 0.9),
        ((one(100, 3, 3), one(40, 30), one(40, 3), one(3, 30)), 0.0, 0.9),
    ]
    for case, ((conv, w, g, x), sigmas, list_below) in enumerate(cases):
        g, x = g.reshape(40, -1), x.reshape(g.numel() // 40, 30)  # output gradient (out x P), input (P x in)
        grouped = 5 <= case < 8
        monkeypatch.setattr(pruning, "_SIGMAS", sigmas)
        monkeypatch.setattr(pruning, "_LIST_BELOW", list_below)
        monkeypatch.setattr(pruning, "_GROUPED_FROM", 0 if grouped else 1 << 16)
        live = pruning._Survivors(["conv", "fc"], [torch.ones(100, 3, 3, dtype=dtype), w], torch.device("cpu"))
        for share in (0.005, 0.4, 0.03, 0.35, 0.3):
            m = max(1, int(share * live.count))
            sources = [live.layer(0, conv.clone()), live.layer(1, g, x)]
            flat = torch.cat([(conv.abs() * live.weights[0]).reshape(-1), ((g @ x) * live.weights[1]).reshape(-1)])
            alive = live.alive.clone()
            # expected: the m smallest alive scores, ties dropping the latest positions
            order = [i for i in sorted(range(flat.numel()), key=lambda i: (float(flat[i]), -i)) if alive[i]]
            drops = live.lowest(sources, m)
            drop = np.concatenate([d + off for (d, _), off in zip(drops, live.offsets)])
            assert sorted(drop.tolist()) == sorted(order[:m])
            live.remove(drops)
            assert int(live.alive.sum()) == int(alive.sum()) - m
            assert live.layer_alive == [int(a.sum()) for a in live.alive_views]
        assert any(lst is not None for lst in live.lists) == (list_below > 0)
        assert (live.groups[1] is not None) == grouped  # a grouped layer is never listed
        assert live.groups[1] is None or live.lists[1] is None


@pytest.mark.parametrize("readout", ["sum", "log_softmax"])
def test_synflow_masks_are_global_mask_of_its_scores(readout):
    # compute_masks takes SynFlow's survivors of the last round instead of ranking its scores
    model = build_model("vgg16", width=0.0625, seed=2)
    masks = compute_masks(model, "SynFlow", 0.03, rounds=6, progress=False, readout=readout)
    scores = pruning.score(model, "SynFlow", density=0.03, rounds=6, progress=False, readout=readout)
    assert same_masks(masks, global_mask(scores, 0.03))
    assert kept(masks) == math.floor(0.03 * n_weights(model))


def test_grouped_layer_removes_right_when_its_input_stops_repeating(monkeypatch):
    """A grouped Linear layer scanned without its runs (the input no longer repeats) still
    removes the weights from its sorted runs, so later grouped scans skip them."""
    monkeypatch.setattr(pruning, "_GROUPED_FROM", 0)
    monkeypatch.setattr(pruning, "_ROUND_SAMPLE", 100)
    gen = torch.Generator().manual_seed(1)
    w = torch.rand(8, 20, generator=gen)
    live = pruning._Survivors(["fc"], [w], torch.device("cpu"))
    g, runs = torch.rand(8, 1, generator=gen), torch.rand(1, 4, generator=gen).repeat_interleave(5, 1)
    for x in (runs, torch.rand(1, 20, generator=gen), runs, runs):  # grouped, not, grouped, grouped
        src = live.layer(0, g, x)
        assert src.grouped == (x is runs)
        scores = ((g * x) * live.weights[0]).reshape(-1)
        alive = live.alive.clone()
        order = [i for i in sorted(range(scores.numel()), key=lambda i: (float(scores[i]), -i)) if alive[i]]
        drops = live.lowest([src], 20)
        assert sorted(drops[0][0].tolist()) == sorted(order[:20])
        live.remove(drops)
    runs = live.groups[0]
    offset = np.arange(runs.ws.size) % runs.size
    removed = np.isnan(runs.ws) | (offset < np.repeat(runs.first, runs.size))  # a marked hole, or before its run's start
    assert int(removed.sum()) == 80 == int((~live.alive).sum())
    assert np.isnan(runs.ws).any() and runs.first.any()  # both ways of removal were taken
    position = np.arange(runs.ws.size) - offset + runs.perm  # the layer position of each sorted entry
    assert sorted(position[removed].tolist()) == np.flatnonzero(~live.alive.numpy()).tolist()


def test_synflow_names_the_layer_whose_alive_scores_are_not_finite():
    live = pruning._Survivors(["conv", "fc"], [torch.ones(10, 3, 3), torch.ones(4, 5)], torch.device("cpu"))
    live.remove([(np.array([0, 1]), None), (np.array([], dtype=np.int64), None)])
    g = torch.ones(10, 3, 3)
    g.view(-1)[0] = math.inf  # a removed weight's gradient may be anything
    assert sum(d.size for d, _ in live.lowest([live.layer(0, g), live.layer(1, torch.ones(4, 1), torch.ones(1, 5))], 3)) == 3
    g.view(-1)[5] = math.nan  # an alive one's may not
    with pytest.raises(FloatingPointError, match="SynFlow scores of 'conv' are not finite"):
        live.lowest([live.layer(0, g), live.layer(1, torch.ones(4, 1), torch.ones(1, 5))], 3)


def test_synflow_scores_in_float32_and_falls_back_to_float64_where_float32_overflows():
    gen = torch.Generator().manual_seed(0)
    sizes = [3 * 32 * 32] + [200] * 29 + [10]  # 30 linear layers
    model = nn.Sequential(nn.Flatten(), *[nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])])
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.zero_()
    absolute = copy.deepcopy(model)
    with torch.no_grad():
        for p in absolute.parameters():
            p.abs_()
        assert not torch.isfinite(absolute(torch.ones(1, 3, 32, 32)).sum())  # R overflows float32 (~160**30)
    s = score(model, "SynFlow", density=0.1, rounds=10, progress=False)
    assert all(v.dtype == torch.float64 for v in s.values())
    assert all(bool(torch.isfinite(v[v > -math.inf]).all()) for v in s.values())
    masks = global_mask(s, 0.1)
    assert kept(masks) == math.floor(0.1 * n_weights(model)) and not empty_layers(masks)
    assert same_masks(masks, synflow_reference(model, 0.1, 10, dtype=torch.float64))
    assert all(v.dtype == torch.float32 for v in score(tiny(), "SynFlow", density=0.1, rounds=2, progress=False).values())


def test_synflow_on_small_vgg16_at_density_001_has_no_empty_layer():
    model = build_model("vgg16", width=0.125, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerCollapseWarning)
        masks = prune(model, "SynFlow", 0.01, progress=False)
    assert not empty_layers(masks)


@pytest.mark.skipif(not os.environ.get("RUN_SLOW"), reason="full-size SynFlow: minutes on 2 CPU cores; set RUN_SLOW=1")
def test_synflow_full_size_vgg16_density_001_finite_and_no_empty_layer():
    model = build_model("vgg16", seed=1)
    s = score(model, "SynFlow", density=0.01, progress=False)
    assert all(bool(torch.isfinite(v[v > -math.inf]).all()) for v in s.values())
    masks = global_mask(s, 0.01)
    assert kept(masks) == math.floor(0.01 * n_weights(model))
    assert not empty_layers(masks)


@pytest.mark.skipif(not os.environ.get("RUN_SLOW"), reason="full-size SynFlow: minutes on 2 CPU cores; set RUN_SLOW=1")
def test_synflow_full_size_resnet34_density_001_collapses_only_a_residual_branch():
    # Faithful SynFlow removes the whole residual branch of layer4.0 at this density (32x32
    # inputs leave layer4 at 1x1); the downsample shortcut keeps the network connected.
    model = build_model("resnet34", seed=1)
    s = score(model, "SynFlow", density=0.01, progress=False)
    assert all(bool(torch.isfinite(v[v > -math.inf]).all()) for v in s.values())
    masks = global_mask(s, 0.01)
    assert set(empty_layers(masks)) <= {"layer4.0.conv1", "layer4.0.conv2"}
    assert masks["layer4.0.downsample.0"].any()


def itersnip_reference(model, data, density, rounds):
    """iterSNIP written plainly, as the reference runs it; the mask of every round.

    Each round: the gradient of the summed per-batch mean loss of the network with masked
    weights w*m, times the DENSE weights w, top floor(density**(r/rounds) * N) of ALL weights.
    """
    ref = copy.deepcopy(model).eval()
    layers = prunable_layers(ref)
    w0 = {k: m.weight.detach().clone() for k, m in layers.items()}
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in w0.items()}
    history = []
    for r in range(1, rounds + 1):
        for k, m in layers.items():
            m.weight = nn.Parameter(w0[k] * masks[k])
        ref.zero_grad()
        for x, y in data:
            F.cross_entropy(ref(x), y).backward()
        masks = reference_top_k({k: (m.weight.grad * w0[k]).abs() for k, m in layers.items()}, density ** (r / rounds))
        history.append(masks)
    return history


@pytest.mark.parametrize("density, rounds", [(0.2, 5), (0.3, 3), (0.05, 4)])
def test_itersnip_matches_a_plain_reimplementation(density, rounds):
    model, data = tiny(), batches()
    got = compute_masks(model, "iterSNIP", density, batches=data, rounds=rounds, progress=False)
    assert kept(got) == math.floor(density * n_weights(model))
    assert same_masks(got, itersnip_reference(model, data, density, rounds)[-1])


def test_itersnip_revives_a_weight_pruned_in_an_early_round():
    """A weight whose effect cancels out at first comes back once the cancelling weight is gone.

    x = 1 -> (u0, u1) -> logits z0 = 2 h0 + 2.5 h1, z1 = 0.25 h0 + 1 h1, label 0. u1 feeds both
    logits almost alike, so its round-1 score |(2.5 d0 + 1 d1) u1| (d = dL/dz, d1 = -d0) is
    low, and it goes with the two weights into z1 (6 weights, density 0.34, 2 rounds: keep 3,
    then 2). In round 2 only z0 depends on u1: its score |2.5 d0 u1| is the largest, so it is
    kept. u0 and the weight 2 tie exactly (one path): the earlier layer keeps its weight.
    """
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [1.0]]))
        model[1].weight.copy_(torch.tensor([[2.0, 2.5], [0.25, 1.0]]))
    data = [(torch.tensor([[1.0]]), torch.tensor([0]))]
    first, last = itersnip_reference(model, data, 0.34, 2)
    assert first["0"].flatten().tolist() == [True, False] and first["1"].flatten().tolist() == [True, True, False, False]
    got = compute_masks(model, "iterSNIP", 0.34, batches=data, rounds=2, progress=False)
    assert got["0"].flatten().tolist() == [True, True] and not got["1"].any()  # u1 is back
    assert kept(got) == math.floor(0.34 * 6) and same_masks(got, last)
    s = score(model, "iterSNIP", data, density=0.34, rounds=2, progress=False)
    assert same_masks(global_mask(s, 0.34), got) and all(bool(torch.isfinite(v).all()) for v in s.values())


def test_scoring_leaves_the_model_untouched():
    model = small()
    model.train()
    model.layer1[0].bn1.eval()  # a mixed mode must come back as it was
    model.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in SCORED:
        score(model, method, batches(), density=0.1, **FAST.get(method, {}))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and not model.layer1[0].bn1.training and model.layer1[0].bn2.training
    assert not model.fc.weight.requires_grad and model.conv1.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_compute_masks_equals_prune_and_leaves_the_model_unpruned():
    model = small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("Rand", "ERK", "SNIP", "SynFlow"):
        masks = compute_masks(model, method, 0.2, batches=batches(), seed=3, **FAST.get(method, {}))
        assert list(model.state_dict()) == list(before)  # no weight_orig / weight_mask added
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        applied = prune(copy.deepcopy(model), method, 0.2, batches=batches(), seed=3, **FAST.get(method, {}))
        assert all(torch.equal(masks[k], applied[k]) for k in masks), method


# ------------------------------------------------------------------------------------ errors


def test_data_methods_without_batches_raise():
    for method in ("SNIP", "GraSP", "iterSNIP"):
        with pytest.raises(ValueError, match=f"{method} needs training batches: pass batches="):
            prune(small(), method, 0.1)


@pytest.mark.parametrize("density", [0, 1.5, -0.1, float("nan")])
def test_bad_densities_raise(density):
    with pytest.raises(ValueError, match="density"):
        prune(small(), "Rand", density)
    with pytest.raises(ValueError, match="density"):
        global_mask({"x": torch.ones(4)}, density)


def test_unknown_method_and_option_and_misuse_raise():
    with pytest.raises(ValueError, match=", ".join(METHODS)):
        prune(small(), "Magnitude", 0.1)
    with pytest.raises(ValueError, match="Magnitude"):
        score(small(), "Magnitude")
    with pytest.raises(TypeError, match="roundz"):
        prune(small(), "SynFlow", 0.1, roundz=3)
    with pytest.raises(ValueError, match="ERK has no per-weight score"):
        score(small(), "ERK")
    with pytest.raises(ValueError, match="pass density"):
        score(small(), "SynFlow")
    with pytest.raises(ValueError, match="density=1.0"):
        prune(small(), "Dense", 0.5)
    assert all(m.all() for m in prune(small(), "Dense", 1.0).values())


# ------------------------------------------------------------------------------ masks on models


def test_prune_applies_masks_with_torch_prune_and_masks_of_reads_them_back():
    model = small()
    masks = prune(model, "Rand", 0.1, seed=4)
    for name, module in prunable_layers(model).items():
        assert hasattr(module, "weight_mask") and hasattr(module, "weight_orig")
        assert torch.all(module.weight[~masks[name]] == 0)
        assert torch.equal(module.weight[masks[name]], module.weight_orig[masks[name]])
    assert same_masks(masks_of(model), masks)
    assert all(m.all() for m in masks_of(small()).values())
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_apply_masks_replaces_previous_masks_and_scores_use_dense_weights():
    fresh = small(seed=2)
    dense = {k: v.clone() for k, v in fresh.state_dict().items()}
    expected = prune(small(seed=2), "SNIP", 0.1, batches=batches())
    model = fresh
    prune(model, "Rand", 0.05, seed=0)
    got = prune(model, "SNIP", 0.1, batches=batches())
    assert same_masks(got, expected)
    assert same_masks(masks_of(model), expected)
    for name, module in prunable_layers(model).items():
        assert torch.equal(module.weight_orig, dense[f"{name}.weight"])  # no compounding
    remove_masks(model)
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())


def test_validate_masks_names_the_first_mismatch():
    model = small()
    good = {k: torch.ones(m.weight.shape, dtype=torch.bool) for k, m in prunable_layers(model).items()}
    validate_masks(model, good)
    validate_masks(model, {k: v.float() for k, v in good.items()})  # 0/1 floats are accepted
    missing = dict(good)
    del missing["layer1.0.conv2"]
    with pytest.raises(ValueError, match="no mask for layer 'layer1.0.conv2'"):
        validate_masks(model, missing)
    with pytest.raises(ValueError, match="'bogus' matches no prunable layer"):
        validate_masks(model, {**good, "bogus": torch.ones(1, dtype=torch.bool)})
    bad = dict(good, fc=torch.full(good["fc"].shape, 0.5))
    with pytest.raises(ValueError, match="'fc' holds values other than 0 and 1"):
        validate_masks(model, bad)
    with pytest.raises(ValueError, match="no mask for layer 'conv1'"):
        apply_masks(model, {})
    assert not hasattr(model.conv1, "weight_mask")  # nothing applied when validation fails


def test_save_load_round_trip_and_width_mismatch(tmp_path):
    model = small()
    masks = prune(model, "Rand", 0.1, seed=0)
    path = save_masks(tmp_path / "m" / "masks.pt", masks)
    loaded = load_masks(path, model)
    assert same_masks(loaded, masks) and all(v.dtype == torch.bool for v in loaded.values())
    other = build_model("resnet34", width=0.25, seed=0)
    with pytest.raises(ValueError) as err:
        load_masks(path, other)
    message = str(err.value)
    assert message.startswith("mask for 'conv1' has shape (8, 3, 7, 7) but the model's weight is (16, 3, 7, 7)")
    assert "another width" in message and "\n" not in message
    assert not list(tmp_path.glob("m/*.tmp"))


def test_layer_and_overall_density():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([[True, True], [True, True]])}
    assert layer_densities(masks) == {"a": 0.25, "b": 1.0}
    assert overall_density(masks) == 5 / 8
    assert empty_layers({**masks, "c": torch.zeros(3, dtype=torch.bool)}) == ["c"]


def test_empty_layer_warning_names_the_layer_and_still_applies_the_mask():
    model = small()
    gen = torch.Generator().manual_seed(0)
    scores = {k: 1 + torch.rand(m.weight.shape, generator=gen) for k, m in prunable_layers(model).items()}
    scores["layer2.0.conv1"] = torch.zeros_like(scores["layer2.0.conv1"])
    with pytest.warns(LayerCollapseWarning, match=r"GraSP left layer 'layer2.0.conv1' with no weights \(layer collapse\)"):
        masks = prune(model, "GraSP", 0.5, scores=scores)
    assert not masks["layer2.0.conv1"].any()
    assert kept(masks) == math.floor(0.5 * n_weights(model))
    assert torch.all(model.layer2[0].conv1.weight == 0)


def test_batches_may_be_a_single_pair_or_a_generator():
    model, data = tiny(), batches(n=1)
    expected = score(model, "SNIP", data)
    for given in (data[0], (b for b in data)):
        got = score(model, "SNIP", given)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    a = score(model, "iterSNIP", (b for b in data), density=0.2, rounds=3, progress=False)
    b = score(model, "iterSNIP", data, density=0.2, rounds=3, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_load_masks_of_a_file_that_is_not_a_mask_file_says_so(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes about masks\n")
    with pytest.raises(ValueError, match=r"notes.txt is not a mask file .*lib.pruning.save_masks"):
        load_masks(notes)
    torch.save({"fc": torch.rand(3, 3)}, tmp_path / "scores.pt")  # a torch file, but scores
    with pytest.raises(ValueError, match="holds values other than 0 and 1"):
        load_masks(tmp_path / "scores.pt")
    with pytest.raises(FileNotFoundError):
        load_masks(tmp_path / "absent.pt")


def test_the_registry_describes_every_method():
    from lib.pruning import METHODS, method_of

    assert list(METHODS)[:5] == ["Rand", "ERK", "SNIP", "GraSP", "SynFlow"]
    for name, m in METHODS.items():
        assert m.name == name and (m.scorer is not None or m.draw is not None)
        assert m.needs_weights or not m.needs_data  # scoring on data reads the weights
    # Methods that only need shapes run on a meta-device model: no weights, same masks.
    meta = build_model("resnet34", width=0.125, meta=True)
    for name in [n for n, m in METHODS.items() if not m.needs_weights and n != "Dense"]:
        on_meta = compute_masks(meta, name, 0.1, seed=3)
        on_real = compute_masks(small(), name, 0.1, seed=3)
        assert all(torch.equal(on_meta[k], on_real[k]) for k in on_real), name
    with pytest.raises(ValueError, match="unknown pruning method 'snip'; choose one of Rand, ERK, SNIP"):
        method_of("snip")
