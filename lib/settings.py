"""What a run is: the grid a profile describes and the settings of each unit of work.

* :class:`Grid` -- one profile's parameters, declared once: type, default (the smoke
  profile) and help text per field. The notebooks' ``parameters`` cells and ``profiles/*.yaml``
  are literal copies of it (papermill needs literals); ``tests/test_settings.py`` holds them
  to it, and ``python -m lib notebooks`` rewrites the cells from it.
* :class:`PruneSettings` (one mask), :class:`TrainSettings` (the training recipe) and
  :class:`TrainRun` (a mask trained with a recipe): frozen dataclasses whose every field,
  defaults included, goes into the hash that names the unit's folder (:func:`settings_hash`,
  plus :data:`SCHEMA_VERSION`). OpenLTH hashes only non-default fields, so changing a default
  re-labels old runs silently; this does not. Bump ``SCHEMA_VERSION`` when a field's meaning
  changes.
* :data:`KEYS` -- the columns that key every tidy table.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .data import DATASETS, VAL_SPLITS
from .files import PROFILES, in_repo
from .models import ARCHS
from .pruning import SYNFLOW_READOUTS, check_density, method_of

# 2: every random source draws from its own stream of the seed (lib.seeds); under 1, Rand's
#    scores and ERK's draws came from the same generator state as the initial weights.
# 3: models narrower than width 1 draw Linear weights with std 0.01 / sqrt(width) (was 0.01).
# 4: ResNet-34 without skips has no ReLU after a block (as the spec and the authors' code).
# 5: SynFlow honours ``synflow_readout`` (under 4 it always summed the output) and iterSNIP
#    scores every weight every round, so removed ones can return (the authors' code).
# 6: SynFlow scores in float32, as the authors' code did (float64 only where float32
#    overflows); under 5 it scored in float64, which moved ~1-4% of the kept weights.
SCHEMA_VERSION = 6

#: The columns that key every tidy table (one row per layer, mask or run).
KEYS = ["arch", "skip", "width", "dataset", "method", "density", "seed"]


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


# ------------------------------------------------------------------------------ units
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
    scoring_batches: int | str = 10  # batches of training data seen by SNIP, GraSP, iterSNIP, or "all"
    scoring_batch_size: int = 256
    scoring_augment: bool = False  # scoring batches drawn with the training augmentation
    rounds: int = 100  # pruning rounds of SynFlow and iterSNIP
    synflow_readout: str = "sum"  # SynFlow's R: "sum" of the output, or of its "log_softmax"
    grasp_temperature: float = 200.0  # GraSP divides the logits by it

    def __post_init__(self):
        _check_choice("architecture", self.arch, ARCHS)
        _check_choice("dataset", self.dataset, DATASETS)
        method_of(self.method)
        object.__setattr__(self, "density", check_density(self.density))
        _check_choice("synflow_readout", self.synflow_readout, SYNFLOW_READOUTS)
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width!r}")

    def key(self) -> dict:
        """The :data:`KEYS` columns of this mask."""
        return {k: getattr(self, k) for k in KEYS}


#: The fields of PruneSettings that say which mask it is; the others are method options.
MASK_KEYS = ("arch", "dataset", "method", "density", "seed", "skip", "width")


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
    val_split: str = "random"  # "random": a seeded share of the training set; "last": its last share
    val_augment: bool = False  # validation images drawn with the training augmentation
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
        _check_choice("val_split", self.val_split, VAL_SPLITS)


#: Fields of the recipe that no profile changes (the paper's values).
RECIPE_CONSTANTS = ("momentum", "weight_decay", "gamma")


@dataclass(frozen=True)
class TrainRun:
    """One training unit: a mask (its prune settings) trained with one recipe."""

    prune: PruneSettings
    train: TrainSettings = field(default_factory=TrainSettings)


@dataclass(frozen=True)
class ControlSet:
    """One controls unit: ``draws`` density-matched random masks of a mask (:mod:`lib.controls`)."""

    prune: PruneSettings
    draws: int = 1

    def __post_init__(self):
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")


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


# ------------------------------------------------------------------------------ the grid
def param(default, help: str):
    """A grid parameter: its default (the smoke profile's value) and its one-line help."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Grid:
    """One profile: which masks to draw, train and measure (defaults: the smoke profile).

    Field names are the notebooks' parameter names. ``densities`` is the list that ``04`` and
    the runners use; notebooks 01-03 take one ``density`` per papermill run. Fields that share a
    name with a field of :class:`PruneSettings` or :class:`TrainSettings` are passed to it.
    """

    profile: str = param("smoke", "name of the parameter set (profiles/<name>.yaml)")
    archs: tuple[str, ...] = param(("resnet34", "vgg16"), "architectures: resnet34, vgg16")
    no_skip: bool = param(True, "also ResNet-34 without skip connections (Fig. 2)")
    dataset: str = param("fashion-mnist", "cifar10, cifar100, fashion-mnist (offline default) or synthetic")
    methods: tuple[str, ...] = param(("Rand", "ERK", "SNIP", "GraSP", "SynFlow"),
                                     "pruning methods: names in lib.pruning.METHODS")
    densities: tuple[float, ...] = param((0.1, 0.4), "densities of the grid (the x axis of the figures)")
    seeds: tuple[int, ...] = param((1,), "seeds: model init, masks, data split and training order")
    metric_width: float = param(0.0625, "width of the models whose masks are measured (1.0: as in the paper)")
    train_width: float = param(0.0625, "width of the models that are trained (1.0: as in the paper)")
    scoring_batches: int | str = param(1, "training batches seen by SNIP, GraSP, iterSNIP, or 'all' (published: all)")
    scoring_batch_size: int = param(32, "images per scoring batch")
    scoring_augment: bool = param(True, "scoring batches with the training augmentation (published: True)")
    rounds: int = param(5, "SynFlow and iterSNIP pruning rounds (paper: 100)")
    synflow_readout: str = param("log_softmax", "SynFlow's R: 'sum' (SynFlow paper) or 'log_softmax' (published masks)")
    grasp_temperature: float = param(1.0, "GraSP's logit temperature (GraSP paper: 200; published scores: 1)")
    epochs: int = param(1, "training epochs (paper: 250)")
    milestones: tuple[int, ...] = param((1, 1), "epochs at which the learning rate drops 10x (paper: 160, 180)")
    batch_size: int = param(128, "training batch size (paper: 256)")
    lr: float = param(0.1, "initial learning rate (paper: 0.1)")
    train_fraction: float = param(0.02, "fraction of the training set used (1.0: all of it)")
    val_fraction: float = param(0.1, "share of the training set held out for validation")
    val_split: str = param("last", "'random': a seeded share held out; 'last': the file's last share (published)")
    val_augment: bool = param(True, "validate on images drawn with the training augmentation (published: True)")
    test_fraction: float = param(0.1, "share of the test set evaluated each epoch (1.0: all of it)")
    bf16: bool = param(False, "bf16 autocast when training on a GPU (changes numerics)")
    control_draws: int = param(1, "density-matched random masks measured per mask (lib.controls; 0: none)")
    reference_densities: tuple[float, ...] = param((0.1,), "densities of the full-size masks 05 holds against the published record")
    runs_dir: str = param("runs/smoke", "where units (masks, training runs, metrics) are kept")
    data_dir: str = param("data", "where datasets are found or downloaded")
    figures_dir: str = param("runs/smoke/figures", "where 04 and 05 write figures and tables")

    def __post_init__(self):
        for f in dataclasses.fields(self):  # YAML and papermill hand over lists
            if f.type.startswith("tuple"):
                value = getattr(self, f.name)
                # one value (--set archs=resnet34, densities=0.1) is a list of one, not of characters
                value = (value,) if isinstance(value, (str, int, float)) else value
                object.__setattr__(self, f.name, tuple(value))
        for arch in self.archs:
            _check_choice("architecture", arch, ARCHS)
        for method in self.methods:
            method_of(method)
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("synflow_readout", self.synflow_readout, SYNFLOW_READOUTS)
        object.__setattr__(self, "densities", tuple(check_density(d) for d in self.densities))
        object.__setattr__(self, "reference_densities", tuple(check_density(d) for d in self.reference_densities))

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_profile(cls, name: str, **overrides) -> "Grid":
        """The grid of ``profiles/<name>.yaml``, with ``overrides`` applied."""
        import yaml

        path = PROFILES / f"{name}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
            raise ValueError(f"unknown profile {name!r}; choose one of {known} (files in {PROFILES})")
        values = {**(yaml.safe_load(path.read_text()) or {}), **overrides}
        unknown = sorted(set(values) - set(grid_fields()))
        if unknown:
            raise ValueError(f"unknown grid parameter(s) {', '.join(unknown)}; the parameters are "
                             f"{', '.join(grid_fields())} (lib.settings.Grid)")
        return cls(**values)

    @classmethod
    def from_parameters(cls, params: dict) -> "Grid":
        """A grid from a notebook's parameters (other names, such as ``density``, ignored)."""
        return cls(**{k: v for k, v in params.items() if k in grid_fields()})

    def values(self) -> dict:
        """Every field by name (tuples as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    # -- where -----------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """``runs_dir`` as a path (relative paths are relative to the repository)."""
        return in_repo(self.runs_dir)

    @property
    def data_root(self) -> Path:
        return in_repo(self.data_dir)

    # -- units -----------------------------------------------------------------------------
    def variants(self) -> list[tuple[str, bool]]:
        """(architecture, skip) pairs: every arch with skips, plus ResNet-34 without."""
        out = [(arch, True) for arch in self.archs]
        if self.no_skip and "resnet34" in self.archs:
            out.append(("resnet34", False))
        return out

    def train_settings(self) -> TrainSettings:
        names = [f.name for f in dataclasses.fields(TrainSettings) if f.name not in RECIPE_CONSTANTS]
        return TrainSettings(**{name: getattr(self, name) for name in names})

    def masks(self, density: float, width: float) -> list[PruneSettings]:
        density = check_density(density)
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(PruneSettings)
                   if f.name not in MASK_KEYS}
        return [
            PruneSettings(arch=arch, dataset=self.dataset, method=method, density=density, seed=seed,
                          skip=skip, width=width, **options)
            for arch, skip in self.variants() for method in self.methods for seed in self.seeds
        ]

    def metric_masks(self, density: float) -> list[PruneSettings]:
        return self.masks(density, self.metric_width)

    def train_masks(self, density: float) -> list[PruneSettings]:
        return self.masks(density, self.train_width)

    def train_runs(self, density: float) -> list[TrainRun]:
        train = self.train_settings()
        return [TrainRun(prune=s, train=train) for s in self.train_masks(density)]

    def control_sets(self, density: float) -> list[ControlSet]:
        if self.control_draws < 1:
            return []
        return [ControlSet(s, self.control_draws) for s in self.metric_masks(density)]


def grid_fields() -> dict[str, dataclasses.Field]:
    """The grid's parameters by name, in declaration order."""
    return {f.name: f for f in dataclasses.fields(Grid)}
