"""Density-matched controls: random masks with exactly a real mask's per-layer kept counts.

Does a graph metric say more about a mask than how its method spread the density over the
layers? (Graph metrics of sparse networks can be "only as good as the layer-wise density",
Cunegatti et al., TMLR 2024; PaI masks survive layer-wise shuffling, Frankle et al., ICLR 2021.)
A *control* of a mask keeps, in every layer, exactly as many weights as the mask does, chosen
uniformly at random; its metrics come from the same checker (:func:`lib.spectral.model_metrics`).
If a metric ranks methods by accuracy no better on the real masks than on their controls, it
measures the layer-wise density.

This module owns drawing controls and measuring them. The unit of work is
:func:`mask_controls` (one mask's keys and per-layer counts in, a ``layers``-shaped table out),
so a caller can cache it per mask; :func:`controls_table` runs it over a whole ``layers`` table.
Draw ``i`` of a mask comes from its own seed stream (the mask's keys, the ``seed`` and ``i``),
so draws are reproducible, independent of the order masks are processed in, and asking for
more draws later keeps the first ones.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from .data import DATASET_SHAPES
from .progress import bar
from .settings import KEYS

# Below this share of kept (or dropped) weights, drawing positions beats a Bernoulli pass.
SPARSE_DRAW = 0.02


def _canonical_keys(keys: Mapping) -> dict:
    """The mask's key columns as plain JSON types (so 0.1, np.float64(0.1) and '0.1' agree)."""
    out = {}
    for k in KEYS:
        if k not in keys:
            continue
        v = keys[k]
        if k in ("density", "width"):
            v = float(v)
        elif k == "seed":
            v = int(v)
        elif k == "skip":
            v = bool(v)
        else:
            v = str(v)
        out[k] = v
    return out


def control_seed(keys: Mapping, draw: int, seed: int = 0) -> np.random.SeedSequence:
    """The seed stream of draw ``draw`` of the controls of the mask ``keys``.

    Derived like :func:`lib.seeds.stream_seed`: a hash of the mask's key columns, the
    ``control`` stream name and ``seed``, with the draw as the SeedSequence's spawn key.
    """
    text = json.dumps({"seed": int(seed), "stream": "control", "mask": _canonical_keys(keys)}, sort_keys=True)
    entropy = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")
    return np.random.SeedSequence(entropy, spawn_key=(int(draw),))


def random_layer_mask(size_left: int, size_right: int, kept: int, rng: np.random.Generator) -> torch.Tensor:
    """A ``(size_right, size_left)`` bool mask (a weight's ``(out, in * kh * kw)``) keeping
    exactly ``kept`` entries, every such set equally likely.

    Few kept (or dropped) entries: their positions are drawn directly. Otherwise a Bernoulli
    pass at ``kept / size`` and then a uniformly chosen surplus removed (or shortfall added):
    the procedure treats every position alike, so the result is uniform over ``kept``-sets.
    """
    size = int(size_left) * int(size_right)
    if not 0 <= kept <= size:
        raise ValueError(f"kept must be in [0, {size}] for a {size_right} x {size_left} layer, got {kept}")
    flat = np.zeros(size, bool)
    few = min(kept, size - kept)
    if few <= SPARSE_DRAW * size:
        pos = rng.choice(size, few, replace=False)
        if few == kept:
            flat[pos] = True
        else:
            flat[:] = True
            flat[pos] = False
    else:
        flat = rng.random(size, dtype=np.float32) < kept / size
        have = int(flat.sum())
        if have > kept:
            flat[rng.choice(np.flatnonzero(flat), have - kept, replace=False)] = False
        elif have < kept:
            flat[rng.choice(np.flatnonzero(~flat), kept - have, replace=False)] = True
    return torch.from_numpy(flat.reshape(int(size_right), int(size_left)))


def model_layer_sizes(arch: str, dataset: str | None = None, skip: bool = True, width: float = 1.0,
                      num_classes: int | None = None, in_channels: int | None = None) -> dict[str, tuple[int, int]]:
    """``{layer: (size_left, size_right)}`` (inputs ``in * kh * kw``, outputs) of every prunable
    layer of the model, from :func:`lib.models.prunable_layers` on the meta device."""
    from .models import build_model, prunable_layers

    if num_classes is None or in_channels is None:
        if dataset not in DATASET_SHAPES:
            raise ValueError(f"unknown dataset {dataset!r}: pass num_classes and in_channels, or one of "
                             f"{', '.join(DATASET_SHAPES)}")
        num_classes, in_channels = DATASET_SHAPES[dataset] if num_classes is None else (num_classes, in_channels)
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels, skip=skip, width=width, meta=True)
    out = {}
    for name, module in prunable_layers(model).items():
        shape = tuple(module.weight.shape)
        out[name] = (math.prod(shape[1:]), shape[0])
    return out


def layer_counts(mask_layers: pd.DataFrame, sizes: Mapping[str, tuple[int, int]] | None = None
                 ) -> dict[str, tuple[int, int, int]]:
    """``{layer: (size_left, size_right, kept)}`` of one mask's rows of a ``layers`` table.

    Kept counts are the ``edges`` column where it exists, else ``round(layer_density * size)``
    (the published record gives only densities). Sizes come from ``size_left``/``size_right``
    where present, else from ``sizes`` (e.g. :func:`model_layer_sizes`).
    """
    out = {}
    for row in mask_layers.itertuples(index=False):
        name = row.layer
        left = getattr(row, "size_left", math.nan)
        right = getattr(row, "size_right", math.nan)
        if not (np.isfinite(left) and np.isfinite(right)):
            if sizes is None or name not in sizes:
                raise ValueError(f"layer {name!r} has no size_left/size_right: pass sizes= "
                                 "(lib.controls.model_layer_sizes) for its model")
            left, right = sizes[name]
        left, right = int(left), int(right)
        edges = getattr(row, "edges", math.nan)
        if np.isfinite(edges):
            kept = int(edges)
        else:
            density = getattr(row, "layer_density", math.nan)
            if not np.isfinite(density):
                raise ValueError(f"layer {name!r} has neither edges nor layer_density: cannot match its density")
            kept = int(round(float(density) * left * right))
        out[name] = (left, right, kept)
    return out


def mask_controls(keys: Mapping, counts: Mapping[str, tuple[int, int, int]], draws: int = 1, seed: int = 0,
                  first_draw: int = 0, solver: str = "auto", progress: bool = False) -> pd.DataFrame:
    """The metrics of ``draws`` density-matched random masks of one mask: its cacheable unit.

    ``keys``: the mask's key columns (:data:`lib.settings.KEYS`); ``counts``: ``{layer:
    (size_left, size_right, kept)}`` (:func:`layer_counts`). Returns a ``layers``-shaped table:
    the key columns, ``layer`` and every :func:`lib.spectral.model_metrics` column, plus
    ``control`` (True) and ``draw`` (``first_draw`` .. ``first_draw + draws - 1``). Draw ``i``
    is the same whatever ``draws`` and ``first_draw`` are, so a cache can be extended.
    """
    from .spectral import model_metrics

    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    key_cols = _canonical_keys(keys)
    frames = []
    todo = bar(range(first_draw, first_draw + draws), enabled=progress, desc="control draws", leave=False)
    for i in todo:
        rng = np.random.default_rng(control_seed(keys, i, seed))
        masks = {name: random_layer_mask(left, right, kept, rng) for name, (left, right, kept) in counts.items()}
        table = model_metrics(masks, solver=solver)
        frames.append(pd.concat([pd.DataFrame([key_cols] * len(table)), table], axis=1).assign(control=True, draw=i))
    return pd.concat(frames, ignore_index=True)


def controls_table(layers: pd.DataFrame, draws: int = 1, seed: int = 0, methods=None, solver: str = "auto",
                   progress: bool = True) -> pd.DataFrame:
    """Density-matched controls of every mask of a ``layers`` table (one mask = one tuple of its
    key columns), concatenated: see :func:`mask_controls`. ``methods``: only these methods'
    masks (default: all). Layer sizes missing from the table come from the model
    (:func:`model_layer_sizes`: ``arch``, ``skip``, ``width`` and the dataset's shape)."""
    keys = [k for k in KEYS if k in layers]
    if "layer" not in layers or not {"arch", "dataset"} <= set(keys):
        raise ValueError("controls_table needs a layers table with arch, dataset, layer and the mask keys "
                         f"({', '.join(KEYS)}): lib.workbook.collect(grid)['layers']")
    sel = layers if methods is None else layers[layers["method"].isin(list(methods))]
    groups = bar(list(sel.groupby(keys, sort=False)), enabled=progress, desc="controls")
    frames = []
    for key, mask in groups:
        k = dict(zip(keys, key))
        sizes = None
        if not {"size_left", "size_right"} <= set(mask) or mask[["size_left", "size_right"]].isna().any().any():
            sizes = model_layer_sizes(k["arch"], k["dataset"], bool(k.get("skip", True)), float(k.get("width", 1.0)))
        frames.append(mask_controls(k, layer_counts(mask, sizes), draws, seed, solver=solver))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
