"""The workbook's grid: profiles, units of work, and the functions the notebooks call.

This module owns *what the notebooks do*, so that the notebooks hold only parameters, calls
and plots. A :class:`Grid` is one profile's parameters (``profiles/*.yaml``, the same names as
the notebooks' ``parameters`` cells). Its work comes in units, each with its own folder under
``runs_dir`` (:mod:`lib.paths`), skipped when done:

* a **mask** per (architecture, skip, method, density, seed, width): ``masks.pt`` + a per-layer
  density table; density-independent scores (Rand, SNIP, GraSP) are computed once per seed
  and cached under ``scores/``;
* a **training run** per mask at ``train_width``: history, result (:mod:`lib.train`);
* **metrics** per mask at ``metric_width``: one row per layer (:mod:`lib.spectral`).

:func:`collect` gathers every unit's tables into tidy tables for ``04_figures``; it reads the
``settings.json`` of each folder and never parses folder names.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import paths
from .results import KEYS, read_json, read_table, write_json, write_table
from .settings import ARCHS, METHODS, PruneSettings, TrainRun, TrainSettings, check_density, settings_dict

PROFILES = paths.REPO / "profiles"
NOTEBOOKS = paths.REPO / "notebooks"
# Scores of these methods do not depend on the density: computed once per seed and cached.
DENSITY_FREE = ("Rand", "SNIP", "GraSP")
MASKS, LAYER_DENSITIES, LAYER_METRICS = "masks.pt", "densities.csv", "layers.csv"
SETTINGS = "settings.json"


@dataclass(frozen=True)
class Grid:
    """One profile: which masks to draw, train and measure. Field names are the notebooks'
    parameter names; ``densities`` is the list that ``04`` and the runner use, while notebooks
    01-03 take one ``density`` per papermill run."""

    profile: str = "smoke"
    archs: tuple[str, ...] = ("resnet34", "vgg16")
    no_skip: bool = True  # also ResNet-34 without skip connections (Fig. 2)
    dataset: str = "fashion-mnist"
    methods: tuple[str, ...] = ("Rand", "ERK", "SNIP", "GraSP", "SynFlow")
    densities: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.4)
    seeds: tuple[int, ...] = (1,)
    metric_width: float = 1.0
    train_width: float = 1.0
    scoring_batches: int = 10
    scoring_batch_size: int = 256
    rounds: int = 100
    epochs: int = 250
    milestones: tuple[int, ...] = (160, 180)
    batch_size: int = 256
    lr: float = 0.1
    train_fraction: float = 1.0
    val_fraction: float = 0.1
    test_fraction: float = 1.0
    bf16: bool = False
    runs_dir: str = "runs/smoke"
    data_dir: str = "data"
    figures_dir: str = "runs/smoke/figures"

    def __post_init__(self):
        for name in ("archs", "methods", "densities", "seeds", "milestones"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for arch in self.archs:
            if arch not in ARCHS:
                raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
        for method in self.methods:
            if method not in METHODS:
                raise ValueError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
        object.__setattr__(self, "densities", tuple(check_density(d) for d in self.densities))

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_profile(cls, name: str, **overrides) -> "Grid":
        """The grid of ``profiles/<name>.yaml``, with ``overrides`` applied."""
        import yaml

        path = PROFILES / f"{name}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
            raise ValueError(f"unknown profile {name!r}; choose one of {known} (files in {PROFILES})")
        values = yaml.safe_load(path.read_text()) or {}
        values.pop("density", None)
        return cls.from_parameters({**values, **overrides})

    @classmethod
    def from_parameters(cls, params: dict) -> "Grid":
        """A grid from a notebook's parameters (extra names, such as ``density``, ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})

    # -- units ----------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.runs_dir) if Path(self.runs_dir).is_absolute() else paths.REPO / self.runs_dir

    @property
    def data_root(self) -> Path:
        return Path(self.data_dir) if Path(self.data_dir).is_absolute() else paths.REPO / self.data_dir

    def variants(self) -> list[tuple[str, bool]]:
        """(architecture, skip) pairs: every arch with skips, plus ResNet-34 without."""
        out = [(arch, True) for arch in self.archs]
        if self.no_skip and "resnet34" in self.archs:
            out.append(("resnet34", False))
        return out

    def train_settings(self) -> TrainSettings:
        return TrainSettings(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            milestones=self.milestones, train_fraction=self.train_fraction,
            val_fraction=self.val_fraction, test_fraction=self.test_fraction, bf16=self.bf16,
        )

    def masks(self, density: float, width: float) -> list[PruneSettings]:
        density = check_density(density)
        return [
            PruneSettings(
                arch=arch, dataset=self.dataset, method=method, density=density, seed=seed,
                skip=skip, width=width, scoring_batches=self.scoring_batches,
                scoring_batch_size=self.scoring_batch_size, rounds=self.rounds,
            )
            for arch, skip in self.variants() for method in self.methods for seed in self.seeds
        ]

    def metric_masks(self, density: float) -> list[PruneSettings]:
        return self.masks(density, self.metric_width)

    def train_runs(self, density: float) -> list[TrainRun]:
        train = self.train_settings()
        return [TrainRun(prune=s, train=train) for s in self.masks(density, self.train_width)]


# ------------------------------------------------------------------------------ data
_SPLITS: dict = {}


def splits_for(dataset: str, seed: int, grid: Grid):
    """The dataset's splits for ``seed``, loaded once per process."""
    from .data import load_data

    key = (dataset, seed, str(grid.data_root), grid.val_fraction, grid.train_fraction,
           grid.test_fraction)
    if key not in _SPLITS:
        _SPLITS.clear()  # one dataset at a time: CIFAR splits are hundreds of MB
        _SPLITS[key] = load_data(dataset, root=grid.data_root, val_fraction=grid.val_fraction,
                                 seed=seed, train_fraction=grid.train_fraction,
                                 test_fraction=grid.test_fraction)
    return _SPLITS[key]


def _model(s: PruneSettings, splits, meta: bool = False):
    from .models import build_model

    return build_model(s.arch, num_classes=splits.num_classes, in_channels=splits.in_channels,
                       skip=s.skip, width=s.width, seed=s.seed, meta=meta)


# ------------------------------------------------------------------------------ masks
def _scores_path(root: Path, s: PruneSettings) -> Path:
    return paths.scores_file(root, dataclasses.replace(s, density=1.0))  # density-free


def _scores(root: Path, s: PruneSettings, model, batches) -> dict:
    """Density-independent scores, computed once per (model, method, seed) and cached."""
    from .pruning import score
    from .results import save_torch

    path = _scores_path(root, s)
    if path.exists():
        return torch.load(path)
    scores = score(model, s.method, batches=batches, seed=s.seed)
    if s.method != "Rand":  # Rand is cheaper to redraw from its seed than to read back
        save_torch(scores, path)
    return scores


def ensure_mask(root: Path, s: PruneSettings, grid: Grid) -> Path:
    """Draw and save the mask of ``s`` unless its folder already holds one; return the folder."""
    from .data import scoring_batches
    from .pruning import compute_masks, layer_densities, save_masks

    folder = paths.mask_dir(root, s)
    if (folder / MASKS).exists():
        return folder
    splits = splits_for(s.dataset, s.seed, grid)
    # Only scoring reads the initial weights. Rand, ERK and cached scores need just the layer
    # shapes, and initialising a full-size VGG-16 costs over half a second of random draws.
    weighted = s.method in ("SynFlow", "iterSNIP") or (
        s.method in DENSITY_FREE and s.method != "Rand" and not _scores_path(root, s).exists())
    model = _model(s, splits, meta=not weighted)
    batches = None
    if s.method in ("SNIP", "GraSP", "iterSNIP"):
        batches = scoring_batches(splits, s.scoring_batches, s.scoring_batch_size, s.seed)
    # The masks are saved, not applied: each consumer (training, metrics) applies or reads them.
    if s.method in DENSITY_FREE:
        masks = compute_masks(model, s.method, s.density, scores=_scores(root, s, model, batches))
    elif s.method in ("SynFlow", "iterSNIP"):
        shape = {"input_shape": (splits.in_channels, 32, 32)} if s.method == "SynFlow" else {}
        masks = compute_masks(model, s.method, s.density, batches=batches, seed=s.seed,
                              rounds=s.rounds, progress=False, **shape)
    else:  # ERK, Dense
        masks = compute_masks(model, s.method, s.density, seed=s.seed)
    dens = layer_densities(masks)
    table = pd.DataFrame({"layer": list(dens), "density": list(dens.values())})
    write_table(_keyed(table, _key_dict(s)), folder / LAYER_DENSITIES)
    write_json(folder / SETTINGS, settings_dict(s))
    save_masks(folder / MASKS, masks)  # last: its presence marks the unit done
    return folder


def _keyed(df: pd.DataFrame, keys: dict) -> pd.DataFrame:
    """Prefix a per-layer or per-epoch table with its unit's key columns."""
    return pd.concat([pd.DataFrame([keys] * len(df)), df.reset_index(drop=True)], axis=1)


def _bar(items, progress: bool, desc: str):
    items = list(items)
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def prune_density(grid: Grid, density: float, progress: bool = True) -> pd.DataFrame:
    """Draw every mask of ``density`` (metric width and train width); one row per mask."""
    units = grid.metric_masks(density)
    if grid.train_width != grid.metric_width:
        units += grid.masks(density, grid.train_width)
    rows = []
    for s in _bar(units, progress, f"masks d={density:g}"):
        folder = ensure_mask(grid.root, s, grid)
        dens = read_table(folder / LAYER_DENSITIES)
        empty = dens.loc[dens["density"] == 0, "layer"].tolist()
        rows.append({**_key_dict(s), "layers": len(dens), "empty_layers": " ".join(empty),
                     "folder": str(folder.relative_to(grid.root))})
    return pd.DataFrame(rows)


def _key_dict(s: PruneSettings | dict) -> dict:
    """The key columns (:data:`lib.results.KEYS`) of a mask's settings (object or its JSON)."""
    get = s.get if isinstance(s, dict) else lambda k: getattr(s, k)
    return {k: get(k) for k in KEYS}


def layer_density_table(grid: Grid, density: float) -> pd.DataFrame:
    """Per-layer densities of the metric-width masks of ``density`` (one row per layer)."""
    frames = [read_table(ensure_mask(grid.root, s, grid) / LAYER_DENSITIES) for s in grid.metric_masks(density)]
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------ training
def ensure_trained(grid: Grid, run: TrainRun, progress: bool = True) -> dict:
    """Train one unit unless finished (a killed run resumes from its checkpoint)."""
    from .pruning import apply_masks, load_masks
    from .train import train

    folder = paths.train_dir(grid.root, run)
    s = run.prune
    splits = splits_for(s.dataset, s.seed, grid)
    mask_folder = ensure_mask(grid.root, s, grid)
    model = _model(s, splits)
    apply_masks(model, load_masks(mask_folder / MASKS, model))
    write_json(folder / SETTINGS, settings_dict(run))
    return train(model, splits, run.train, folder, seed=s.seed, progress=progress)


def train_density(grid: Grid, density: float, progress: bool = True) -> pd.DataFrame:
    """Train every mask of ``density``; one row per run (keys, status, accuracies)."""
    rows = []
    for run in _bar(grid.train_runs(density), progress, f"training d={density:g}"):
        result = ensure_trained(grid, run, progress=progress)
        rows.append({**_key_dict(run.prune), **_result_row(result)})
    return pd.DataFrame(rows)


def _result_row(result: dict) -> dict:
    keep = ("status", "test_acc", "val_acc", "best_epoch", "epochs_run", "diverged_epoch")
    row = {k: result.get(k) for k in keep}
    row["empty_layers"] = " ".join(result.get("empty_layers") or [])
    return row


def histories(grid: Grid, density: float | None = None) -> pd.DataFrame:
    """Learning curves of the finished or running units: one row per (run, epoch)."""
    frames = []
    for folder in sorted((grid.root / "train").glob("*")):
        hist = folder / "history.csv"
        if not hist.exists() or not (folder / SETTINGS).exists():
            continue
        run = read_json(folder / SETTINGS)
        s = run["prune"]
        if density is not None and not math.isclose(s["density"], density):
            continue
        frames.append(_keyed(read_table(hist), _key_dict(s)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------------------ metrics
def ensure_metrics(grid: Grid, s: PruneSettings) -> pd.DataFrame:
    """Per-layer graph metrics of one mask (computed once, then read back)."""
    from .pruning import load_masks
    from .spectral import model_metrics

    folder = ensure_mask(grid.root, s, grid)
    path = folder / LAYER_METRICS
    if path.exists():
        return read_table(path)
    table = _keyed(model_metrics(load_masks(folder / MASKS)), _key_dict(s))
    write_table(table, path)
    return table


def metrics_density(grid: Grid, density: float, progress: bool = True) -> pd.DataFrame:
    """Per-layer metrics of every metric-width mask of ``density`` (one row per layer)."""
    frames = [ensure_metrics(grid, s) for s in _bar(grid.metric_masks(density), progress, f"metrics d={density:g}")]
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------ gathering
# What joins a training run to the metrics of its mask: the keys without the width, since
# the trained and the measured models may differ in width.
JOIN = [k for k in KEYS if k != "width"]


def mask_summaries(layers: pd.DataFrame) -> pd.DataFrame:
    """One row per mask: its keys and the model-level aggregates of its per-layer metrics."""
    from .spectral import summarize

    rows = [{**dict(zip(KEYS, k)), **summarize(g).to_dict()} for k, g in layers.groupby(KEYS, sort=False)]
    return pd.DataFrame(rows)


def collect(grid: Grid) -> dict[str, pd.DataFrame]:
    """The grid's finished units, over all its densities, as tidy tables.

    ``layers``: one row per (mask, layer) with the graph metrics; ``masks``: one row per
    measured mask (:func:`mask_summaries`); ``runs``: one row per training run;
    ``results``: ``runs`` joined with ``masks`` on arch, skip, dataset, method, density, seed
    (``train_width`` and ``metric_width`` say which models each side used); ``missing``: the
    units not finished yet. Units are found from the grid's settings, so folders of older
    settings in the same ``runs_dir`` are never mixed in.
    """
    layer_frames, run_rows, missing = [], [], []
    for density in grid.densities:
        for s in grid.metric_masks(density):
            path = paths.mask_dir(grid.root, s) / LAYER_METRICS
            if path.exists():
                layer_frames.append(read_table(path))
            else:
                missing.append({**_key_dict(s), "unit": "metrics", "folder": str(path.parent)})
        for run in grid.train_runs(density):
            folder = paths.train_dir(grid.root, run)
            if (folder / "result.json").exists():
                run_rows.append({**_key_dict(run.prune), **_result_row(read_json(folder / "result.json"))})
            else:
                missing.append({**_key_dict(run.prune), "unit": "training", "folder": str(folder)})
    layers = pd.concat(layer_frames, ignore_index=True) if layer_frames else pd.DataFrame()
    masks = mask_summaries(layers) if len(layers) else pd.DataFrame()
    runs = pd.DataFrame(run_rows)
    results = pd.DataFrame()
    if len(masks) and len(runs):
        results = runs.rename(columns={"width": "train_width"}).merge(
            masks.rename(columns={"width": "metric_width"}), on=JOIN, how="outer",
            suffixes=("", "_mask"))
    return {"layers": layers, "masks": masks, "runs": runs, "results": results,
            "missing": pd.DataFrame(missing)}


def write_tables(tables: dict[str, pd.DataFrame], folder: str | Path) -> dict[str, Path]:
    """Write each table as ``<folder>/<name>.csv`` (atomically, no index)."""
    folder = Path(folder)
    return {name: write_table(df, folder / f"{name}.csv") for name, df in tables.items()}


# ------------------------------------------------------------------------------ running
STAGES = ("01_pruning", "02_training", "03_spectral")
FINAL = "04_figures"


def notebook_parameters(notebook: str, values: dict) -> dict:
    """The subset of ``values`` that ``notebook`` declares in its ``parameters`` cell."""
    import papermill

    declared = papermill.inspect_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k in declared}


def grid_values(grid: Grid) -> dict:
    return {f.name: getattr(grid, f.name) for f in dataclasses.fields(grid)}


def execute(notebook: str, grid: Grid, output: Path, **extra) -> Path:
    """Run one notebook with papermill, with the grid's parameters (and ``extra``)."""
    import papermill

    params = notebook_parameters(notebook, {**grid_values(grid), "progress": False, **extra})
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(output), parameters=params,
                               cwd=str(paths.REPO), progress_bar=False)
    return output


def density_jobs(grid: Grid) -> list[tuple[str, float, Path]]:
    """(notebook, density, output) for every notebook 01-03 of every density, in order."""
    out_dir = grid.root / "notebooks"
    return [(nb, d, out_dir / f"d{d:g}" / f"{nb}.ipynb") for d in grid.densities for nb in STAGES]


def run(grid: Grid, progress: bool = True) -> Path:
    """The whole profile in this process: 01-03 for every density, then 04."""
    jobs = density_jobs(grid)
    for nb, density, output in _bar(jobs, progress, f"{grid.profile}"):
        execute(nb, grid, output, density=density)
    return execute(FINAL, grid, grid.root / "notebooks" / f"{FINAL}.ipynb")


def main(argv=None) -> int:
    """``python -m lib.workbook run|status|estimate``; bad input ends with one ``error:`` line."""
    import argparse
    import os
    import sys
    import time

    import yaml

    # Under `python -m lib.workbook` this module is __main__: take Grid from lib.workbook, so
    # that the grids pickled into submitit jobs name a class the jobs can import.
    from . import scaleout
    from . import workbook as wb

    p = argparse.ArgumentParser(prog="python -m lib.workbook",
                                description="Run a profile of the workbook end to end with papermill.")
    sub = p.add_subparsers(dest="command", required=True)

    def grid_options(parser):
        parser.add_argument("--profile", default="quick", help="profiles/<name>.yaml (smoke, quick, paper)")
        parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                            help="override profile values, e.g. --set seeds=[1,2] epochs=10 (YAML values)")

    r = sub.add_parser("run", help="run 01-03 for every density of a profile, then 04")
    grid_options(r)
    r.add_argument("--executor", default="inprocess",
                   help="inprocess (default: this process), local (submitit, one process per job) or "
                        "slurm (submitit job array)")
    r.add_argument("--parallel", type=int, default=None,
                   help=f"jobs at a time (local: default 1; slurm: array tasks at a time, default "
                        f"{scaleout.SLURM_PARALLEL})")
    r.add_argument("--threads", type=int, default=None,
                   help="CPU threads per job (default: local, cores // parallel; slurm, --cpus-per-job)")
    r.add_argument("--gpus", type=int, nargs="+", default=None,
                   help="local: GPU ids to spread jobs over, one per job (default: all visible)")
    r.add_argument("--timeout-min", type=int, default=None,
                   help=f"a job's time limit in minutes, after which it is requeued and resumes (default: "
                        f"local {scaleout.LOCAL_TIMEOUT_MIN}, slurm {scaleout.SLURM_TIMEOUT_MIN})")
    r.add_argument("--max-requeues", type=int, default=scaleout.MAX_REQUEUES,
                   help="time-limit requeues per job (default %(default)s)")
    r.add_argument("--partition", default=None, help="slurm: partition (default: the cluster's)")
    r.add_argument("--gpus-per-job", type=int, default=scaleout.SLURM_GPUS, help="slurm (default %(default)s)")
    r.add_argument("--cpus-per-job", type=int, default=scaleout.SLURM_CPUS, help="slurm (default %(default)s)")
    r.add_argument("--mem-gb", type=float, default=None, help="slurm: memory per job (default: the cluster's)")
    r.add_argument("--sbatch", nargs="*", default=[], metavar="KEY=VALUE",
                   help="slurm: extra #SBATCH options, e.g. --sbatch account=proj qos=normal")
    r.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="slurm: a shell line run before the job, e.g. --setup 'module load cuda' (repeatable)")
    r.add_argument("--no-wait", action="store_true",
                   help="slurm: submit and return; run the same command again later for the rest and 04")
    r.add_argument("--no-notebooks", action="store_true",
                   help="jobs call lib.workbook's functions instead of executing 01-03 with papermill")
    st = sub.add_parser("status", help="done / pending / running / failed / missing per job of a profile")
    grid_options(st)
    es = sub.add_parser("estimate", help="training hours per job and for the whole grid")
    grid_options(es)
    es.add_argument("--throughput", nargs="*", default=[], metavar="ARCH=IMG_PER_S",
                    help="masked-training images/s per architecture (bench/bench_train.py)")
    es.add_argument("--bench", default=None, help="read them from bench_train.py's CSV instead")
    args = p.parse_args(argv)

    def pairs(items, flag):
        out = {}
        for item in items:
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
            out[key] = value
        return out

    try:
        options = None
        if args.command == "run":
            options = scaleout.Options(
                executor=args.executor, parallel=args.parallel, threads=args.threads, gpus=args.gpus,
                timeout_min=args.timeout_min, partition=args.partition, gpus_per_job=args.gpus_per_job,
                cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb, sbatch=pairs(args.sbatch, "--sbatch"),
                setup=args.setup, max_requeues=args.max_requeues, notebooks=not args.no_notebooks)
        overrides = {name: yaml.safe_load(value) for name, value in pairs(args.set, "--set").items()}
        grid = wb.Grid.from_profile(args.profile, **overrides)
        if args.command == "estimate":
            throughput = {k: float(v) for k, v in pairs(args.throughput, "--throughput").items()}
            if args.bench:
                throughput = {**scaleout.throughput_from_bench(args.bench), **throughput}
            table = scaleout.estimate(grid, throughput)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.command == "estimate":
        per_arch = table.groupby("arch", sort=False).agg(
            jobs=("hours", "size"), runs_per_job=("training_runs", "first"), img_per_s=("img_per_s", "first"),
            hours_per_job=("hours", "first"), hours=("hours", "sum"))
        print(f"{grid.profile}: {grid.dataset}, {grid.epochs} epochs x {int(table['images_per_epoch'].iloc[0])} "
              f"training images per run; hours = runs x epochs x images / (img/s) / 3600, evaluation excluded")
        print(per_arch.round(2).to_string())
        print(f"whole grid: {len(table)} jobs, {int(table['training_runs'].sum())} training runs, "
              f"{table['hours'].sum():.1f} hours")
        return 0

    if args.command == "status":
        table = scaleout.status(grid)
        here = os.getcwd() + os.sep
        table["log"] = [os.path.relpath(p) if p.startswith(here) else p for p in table["log"]]
        print(table.to_string(index=False))
        print(", ".join(f"{k} {v}" for k, v in scaleout.counts(table).items()) + f" (of {len(table)} jobs)")
        return 0

    start = time.perf_counter()
    if options.executor == "inprocess":
        with scaleout._thread_env(options.threads):
            final = wb.run(grid)
        print(f"done in {time.perf_counter() - start:.0f} s: figures in {grid.figures_dir}, notebooks and "
              f"tables in {grid.root} (last notebook: {final})")
        return 0
    outcome = scaleout.run_grid(grid, options, wait=not args.no_wait)
    counts = scaleout.counts(outcome.status)
    print(f"{len(outcome.submitted)} jobs submitted ({options.executor}), {len(outcome.alive)} already queued: "
          + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    if outcome.complete:
        where = f"figures in {grid.figures_dir}" if outcome.figures else "figures up to date"
        print(f"all {len(outcome.status)} jobs done in {time.perf_counter() - start:.0f} s: {where}, "
              f"tables in {grid.root / 'tables'}, job notebooks and logs in {grid.root / 'jobs'}")
        return 0
    bad = outcome.status[outcome.status["state"].isin(scaleout.RERUN)]
    if len(bad):
        print(bad.to_string(index=False))
    print(f"not complete: rerun the same command to run only the missing, failed and interrupted jobs; "
          f"`python -m lib.workbook status --profile {args.profile}` (with the same --set) shows each job")
    return 1 if len(bad) else 0


if __name__ == "__main__":
    raise SystemExit(main())
