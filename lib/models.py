"""The two networks of the paper, their initialisation, and what "prunable" means.

* :func:`build_model` -- ResNet-34 (torchvision's ImageNet-style structure: 7x7 stride-2 stem,
  max-pool, BasicBlocks ``[3, 4, 6, 3]``) and VGG-16 with batch norm (``vgg16_bn``), with
  ``num_classes``, ``in_channels``, ``skip`` (ResNet-34 without residual connections, Fig. 2)
  and ``width`` (a channel multiplier for small machines). Module names are torchvision's
  (``conv1``, ``layer1.0.downsample.0``, ``features.0``, ``classifier.6``), so masks keyed by
  module name mean the same as in torchvision-based code.
* The initialisation of ``shared/spec/experiments.md`` (conv ~ N(0, sqrt(2 / (kh*kw*out))),
  BatchNorm weight 0.5, Linear ~ N(0, 0.01), biases 0), drawn from a private generator seeded
  by the run's seed, so building a model never disturbs the global RNG. A narrowed model
  draws Linear weights with std ``0.01 / sqrt(width)``, which keeps each layer's signal gain
  (fan-in x variance) that of the paper's model; a fixed 0.01 would shrink an eighth-width
  VGG-16's logits ~23 times (``sqrt(8**3)``).
* :func:`prunable_layers` -- THE definition of what is pruned: the weight of every
  ``nn.Conv2d`` and ``nn.Linear`` (not biases, not BatchNorm).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lib.seeds import stream_seed

__all__ = ["ARCHS", "build_model", "prunable_layers", "ResNet", "VGG", "BasicBlock", "PlainBasicBlock"]

ARCHS = ("resnet34", "vgg16")

RESNET34_BLOCKS = (3, 4, 6, 3)
RESNET_PLANES = (64, 128, 256, 512)
# torchvision's configuration "D" (VGG-16); "M" is a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to an integer, at least 1."""
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: same submodule names, shapes and computation
    (``tests/test_models.py`` checks the outputs against torchvision's ResNet-34). Written here
    because importing ``torchvision.models`` costs ~2 s, paid by every notebook kernel."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class PlainBasicBlock(BasicBlock):
    """A ResNet BasicBlock without its residual connection (and without a downsample branch).

    It returns ``bn2(conv2(relu(bn1(conv1(x)))))``, as ``shared/spec/experiments.md`` writes it
    and as the authors' code does: no ReLU after the block (torchvision's final ReLU belongs to
    the residual addition, which is gone), so consecutive blocks meet without a non-linearity.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class ResNet(nn.Module):
    """torchvision's ResNet (BasicBlock variant) with a channel multiplier and optional skips."""

    def __init__(self, blocks=RESNET34_BLOCKS, num_classes=10, in_channels=3, skip=True, width=1.0):
        super().__init__()
        self.skip = skip
        self.inplanes = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (n, planes) in enumerate(zip(blocks, RESNET_PLANES)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", self._make_layer(_scaled(planes, width), n, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for j in range(n):
            s = stride if j == 0 else 1
            if self.skip:
                downsample = None
                if s != 1 or self.inplanes != planes:
                    downsample = nn.Sequential(
                        nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=s, bias=False),
                        nn.BatchNorm2d(planes),
                    )
                layers.append(BasicBlock(self.inplanes, planes, s, downsample))
            else:
                layers.append(PlainBasicBlock(self.inplanes, planes, s, None))
            self.inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class VGG(nn.Module):
    """torchvision's ``vgg16_bn`` with a channel multiplier on convolutions and the classifier."""

    def __init__(self, cfg=VGG16_CFG, num_classes=10, in_channels=3, width=1.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = _scaled(v, width)
                layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        hidden = _scaled(4096, width)
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _initialise(model: nn.Module, generator: torch.Generator | None, width: float = 1.0) -> None:
    """Fill every parameter and buffer of ``model`` as experiments.md prescribes.

    Draws happen in ``model.modules()`` order, so a seed fixes every weight. ``width``: the
    model's channel multiplier; Linear weights get std ``0.01 / sqrt(width)`` (module docstring).
    """
    linear_std = 0.01 / math.sqrt(width)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                std = math.sqrt(2.0 / (kh * kw * module.out_channels))  # kaiming normal, fan_out
                module.weight.normal_(0.0, std, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(0.5)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.num_batches_tracked.zero_()
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, linear_std, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                # Built on the meta device, anything not initialised here would hold garbage.
                raise TypeError(f"no initialisation rule for {type(module).__name__}")


def build_model(
    arch: str,
    num_classes: int = 10,
    in_channels: int = 3,
    skip: bool = True,
    width: float = 1.0,
    seed: int | None = None,
    meta: bool = False,
) -> nn.Module:
    """Build ``arch`` ('resnet34' or 'vgg16') on the CPU, initialised as in experiments.md.

    ``seed`` (int) draws every initial weight from a private generator seeded with it: the same
    seed gives bit-identical weights and the global RNG is untouched. ``seed=None`` draws from
    the global RNG. ``skip=False`` (resnet34 only) removes the residual connections and the
    downsample branches. ``width`` multiplies every layer's channel count (at least 1 channel)
    and scales the Linear init std by ``1 / sqrt(width)``; width 1 is the paper's model.
    ``meta=True`` returns the structure on the ``meta`` device: module names and weight shapes,
    no memory and no random draws (enough for Rand and ERK masks, or to validate masks).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if not (isinstance(width, (int, float)) and width > 0 and math.isfinite(width)):
        raise ValueError(f"width must be a positive number (1.0 is the paper's model), got {width!r}")
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes!r} and {in_channels!r}")
    with torch.device("meta"):
        if arch == "resnet34":
            model = ResNet(RESNET34_BLOCKS, int(num_classes), int(in_channels), bool(skip), float(width))
        else:
            if not skip:
                raise ValueError("skip=False removes residual connections and applies to resnet34 only; vgg16 has none")
            model = VGG(VGG16_CFG, int(num_classes), int(in_channels), float(width))
    if meta:
        return model
    model = model.to_empty(device="cpu")
    generator = None
    if seed is not None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(stream_seed(seed, "init"))
    _initialise(model, generator, float(width))
    return model


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Conv2d`` and ``nn.Linear`` of ``model``, keyed by module name, in model order.

    Their ``weight`` is what the project prunes; biases and BatchNorm are never pruned.
    """
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
