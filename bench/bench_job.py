"""Wall time of one job's notebooks (01 -> 03 with papermill), a kernel each against one shared kernel.

A job of the quick profile (default: ResNet-34, density 0.05, one thread, as the main command
runs it) is run once per way, in that order, each time into a fresh run folder, so that both
ways compute every unit (no skip-if-done between them). ``separate``: each notebook starts
its own kernel and imports torch, pandas and seaborn, as the jobs did before
:class:`lib.scaleout.SharedKernel`; ``shared``: the three run in one kernel, as jobs do now.
The units' tables must agree (timings aside); the script checks that.

    .venv/bin/python bench/bench_job.py
    .venv/bin/python bench/bench_job.py --arch vgg16 --density 0.1 --ways shared separate
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from lib import scaleout, settings, workbook
from lib.files import read_table

TIMINGS = ("epoch_seconds", "train_seconds")  # the only columns that may differ between runs


def run_job(root: Path, arch: str, density: float, shared: bool) -> dict[str, float]:
    """Seconds per notebook of one quick-profile job run into ``root``."""
    grid = settings.Grid.from_profile("quick", runs_dir=str(root), figures_dir=str(root / "figures"),
                                      reference_densities=[])
    (spec,) = [s for s in scaleout.jobs(grid) if s.arch == arch and s.density == density]
    g, folder = scaleout.job_grid(grid, spec), scaleout.job_dir(grid, spec)
    seconds = {}
    with contextlib.ExitStack() as stack:
        kernel = stack.enter_context(scaleout.SharedKernel(folder / "kernel.log")) if shared else None
        for name in workbook.STAGES:
            start = time.perf_counter()
            scaleout.execute(name, g, folder / f"{name}.ipynb", kernel=kernel, density=density)
            seconds[name] = time.perf_counter() - start
    return seconds


def tables(root: Path) -> dict[str, str]:
    """Every csv of the run folder but the jobs', timing columns dropped, as text, by relative path."""
    out = {}
    for path in sorted(root.rglob("*.csv")):
        if "jobs" in path.relative_to(root).parts:
            continue
        table = read_table(path)
        out[str(path.relative_to(root))] = table.drop(columns=[c for c in TIMINGS if c in table]).to_csv(index=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet34", choices=["resnet34", "vgg16"])
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--ways", nargs="+", default=["separate", "shared"], choices=["separate", "shared"])
    ap.add_argument("--threads", type=int, default=1, help="threads of the kernels, as a job of the main command")
    args = ap.parse_args()
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-job-") as tmp, scaleout.environment(args.threads):
        for way in args.ways:
            root = Path(tmp) / way
            start = time.perf_counter()
            seconds = run_job(root, args.arch, args.density, shared=way == "shared")
            rows.append((way, seconds, time.perf_counter() - start))
            outputs[way] = tables(root)
            print(f"{way}: done", flush=True)
    first, *others = outputs.values()
    same = all(o == first for o in others)
    print(f"\n{args.arch}, density {args.density}, {args.threads} thread(s); units' tables identical: {same}")
    print(f"{'way':<10}" + "".join(f"{n:>14}" for n in workbook.STAGES) + f"{'all s':>10}")
    for way, seconds, total in rows:
        print(f"{way:<10}" + "".join(f"{seconds[n]:14.1f}" for n in workbook.STAGES) + f"{total:10.1f}")
    if not same:
        raise SystemExit("the ways' tables differ")


if __name__ == "__main__":
    main()
