"""The command line: ``python -m lib run|status|estimate|notebooks`` (``python -m lib.workbook``
is the older spelling). Errors the user can fix end with one ``error:`` line naming the fix,
and the log or notebook that holds the details."""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import scaleout
from .data import DatasetNotFoundError
from .files import NOTEBOOKS
from .settings import Grid


def _pairs(items, flag) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib",
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
    nb = sub.add_parser("notebooks", help="check (or --write) the notebooks' parameters cells against lib.settings.Grid")
    nb.add_argument("--write", action="store_true", help="rewrite the cells that differ")
    return p


def _estimate(grid: Grid, args) -> int:
    throughput = {k: float(v) for k, v in _pairs(args.throughput, "--throughput").items()}
    if args.bench:
        throughput = {**scaleout.throughput_from_bench(args.bench), **throughput}
    table = scaleout.estimate(grid, throughput)
    per_arch = table.groupby("arch", sort=False).agg(
        jobs=("hours", "size"), runs_per_job=("training_runs", "first"), img_per_s=("img_per_s", "first"),
        hours_per_job=("hours", "first"), hours=("hours", "sum"))
    print(f"{grid.profile}: {grid.dataset}, {grid.epochs} epochs x {int(table['images_per_epoch'].iloc[0])} "
          f"training images per run; hours = runs x epochs x images / (img/s) / 3600, evaluation excluded")
    print(per_arch.round(2).to_string())
    print(f"whole grid: {len(table)} jobs, {int(table['training_runs'].sum())} training runs, "
          f"{table['hours'].sum():.1f} hours")
    return 0


def _status(grid: Grid) -> int:
    table = scaleout.status(grid)
    here = os.getcwd() + os.sep
    table["log"] = [os.path.relpath(p) if p.startswith(here) else p for p in table["log"]]
    print(table.to_string(index=False))
    print(", ".join(f"{k} {v}" for k, v in scaleout.counts(table).items()) + f" (of {len(table)} jobs)")
    return 0


def _notebooks(write: bool) -> int:
    stale = scaleout.stale_parameter_cells(write=write)
    if not stale:
        print("notebooks: every parameters cell matches lib.settings.Grid")
        return 0
    verb = "rewrote" if write else "differs from lib.settings.Grid (rerun with --write)"
    for name in stale:
        print(f"{NOTEBOOKS / name}.ipynb: parameters cell {verb}")
    return 0 if write else 1


def _run(grid: Grid, options: scaleout.Options, args) -> int:
    start = time.perf_counter()
    if options.executor == "inprocess":
        with scaleout.environment(options.threads):
            final = scaleout.run_inprocess(grid)
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
    for row in bad.itertuples():
        print(f"error: job {row.arch}-{row.dataset}-d{row.density:g}-s{row.seed} {row.state}: {row.error} "
              f"(details: {row.log})", file=sys.stderr)
    print(f"not complete: rerun the same command to run only the missing, failed and interrupted jobs; "
          f"`python -m lib status --profile {args.profile}` (with the same --set) shows each job")
    return 1 if len(bad) else 0


def main(argv=None) -> int:
    """``python -m lib run|status|estimate|notebooks``; bad input ends with one ``error:`` line."""
    import yaml

    args = _parser().parse_args(argv)
    try:
        if args.command == "notebooks":
            return _notebooks(args.write)
        options = None
        if args.command == "run":
            options = scaleout.Options(
                executor=args.executor, parallel=args.parallel, threads=args.threads, gpus=args.gpus,
                timeout_min=args.timeout_min, partition=args.partition, gpus_per_job=args.gpus_per_job,
                cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb, sbatch=_pairs(args.sbatch, "--sbatch"),
                setup=args.setup, max_requeues=args.max_requeues, notebooks=not args.no_notebooks)
        overrides = {name: yaml.safe_load(value) for name, value in _pairs(args.set, "--set").items()}
        grid = Grid.from_profile(args.profile, **overrides)
        if args.command == "estimate":
            return _estimate(grid, args)
        if args.command == "status":
            return _status(grid)
        return _run(grid, options, args)
    except (ValueError, DatasetNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except scaleout.NotebookError as exc:
        print(f"error: {exc.message} (details: {exc.notebook})", file=sys.stderr)
        return 1
