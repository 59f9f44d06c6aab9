"""Run settings: frozen dataclasses and the hash that names a run's folder.

This module owns *what a run is*. A run's identity is every field of its settings plus
``SCHEMA_VERSION``: the hash covers all fields, defaults included, so changing a default
produces a new folder instead of silently re-labelling old results (OpenLTH hashes only
non-default fields; we do not). Bump ``SCHEMA_VERSION`` when the meaning of a field changes.

Paths are built from these settings in :mod:`lib.paths`, never here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

# 2: every random source draws from its own stream of the seed (stream_seed); under 1, Rand's
#    scores and ERK's draws came from the same generator state as the initial weights.
# 3: models narrower than width 1 draw Linear weights with std 0.01 / sqrt(width) (was 0.01).
SCHEMA_VERSION = 3

ARCHS = ("resnet34", "vgg16")
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "synthetic")
METHODS = ("Dense", "Rand", "ERK", "SNIP", "GraSP", "SynFlow", "iterSNIP")


def check_density(density: float) -> float:
    """Return ``density`` as a float, or raise if it is not a fraction of weights kept."""
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(
            f"density must be in (0, 1] (the fraction of weights kept), got {density!r}; "
            "for 99% sparsity pass density=0.01"
        )
    return value


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one random source (``stream``) of a run whose setting is ``seed``.

    A run has one ``seed`` setting, but each random source draws from its own generator seeded
    with this derived value: two generators seeded with the same number produce the same
    draws, so a Rand mask scored with the seed of the initial weights would keep the largest
    weights, not a random set, and an ERK mask would be just as correlated with them.
    Streams: ``init``, ``split``, ``test``, ``scoring``, ``Rand``, ``ERK``, ``shuffle``,
    ``dropout``.
    """
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch seeds are < 2**63


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class PruneSettings:
    """Everything that decides one mask: the model it is drawn on and the pruning method."""

    arch: str
    dataset: str
    method: str
    density: float
    seed: int
    skip: bool = True  # ResNet-34 without residual connections when False (paper's Fig. 2)
    width: float = 1.0  # channel multiplier; 1.0 is the paper's model
    scoring_batches: int = 10  # batches of training data seen by SNIP, GraSP, iterSNIP
    scoring_batch_size: int = 256
    rounds: int = 100  # pruning rounds of SynFlow and iterSNIP

    def __post_init__(self):
        _check_choice("architecture", self.arch, ARCHS)
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("pruning method", self.method, METHODS)
        object.__setattr__(self, "density", check_density(self.density))
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width!r}")


def paper_milestones(epochs: int) -> tuple[int, ...]:
    """The paper's lr decay epochs (160 and 180 of 250), scaled to ``epochs``."""
    return tuple(max(1, round(epochs * m / 250)) for m in (160, 180))


@dataclass(frozen=True)
class TrainSettings:
    """The training recipe (paper, Table 1) and the budget knobs for small machines."""

    epochs: int = 250
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (160, 180)  # epochs at which lr is multiplied by gamma
    gamma: float = 0.1
    train_fraction: float = 1.0  # fraction of the (non-validation) training set used
    val_fraction: float = 0.1  # share of the training set held out for validation
    test_fraction: float = 1.0  # share of the test set evaluated (a seeded subsample below 1)
    bf16: bool = False  # bf16 autocast on GPU; changes numerics, so it is part of the hash

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("train_fraction", "test_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class TrainRun:
    """One training unit: a mask (its prune settings) trained with one recipe."""

    prune: PruneSettings
    train: TrainSettings = field(default_factory=TrainSettings)


def settings_dict(settings) -> dict:
    """All fields of a settings dataclass (nested ones included), as plain JSON types."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def settings_hash(settings) -> str:
    """A short, stable hash of *all* fields of ``settings`` and the schema version."""
    payload = {
        "schema": SCHEMA_VERSION,
        "type": type(settings).__name__,
        "fields": settings_dict(settings),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
