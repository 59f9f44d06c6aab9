"""Every way of running a grid: in this process, as local processes, or as a SLURM array.

This module owns *how a grid is run*: the papermill runner (:func:`execute`, the notebooks'
parameters cells :func:`parameters_cell`), the in-process runner (:func:`run_inprocess`),
and scale-out through submitit: a grid's **jobs** (one per architecture, dataset, density
and seed: notebooks 01 -> 03 on the grid narrowed to it, then its share of 05's full-size
masks (:func:`job_reference`); ResNet-34 without skips rides with the ResNet-34 job), their
state files, ``status``, and ``estimate``. It computes nothing
itself: jobs leave the same units in the same run folder as an in-process run, so resume
and skip-if-done come from :mod:`lib.workbook` and :mod:`lib.store`.

A job's notebooks run one after another in one kernel (:class:`SharedKernel`: its start-up
and imports paid once). A job's folder (:func:`lib.store.job_dir`) holds its executed
notebooks, the kernel's ``kernel.log`` (if it wrote to stderr), ``job.log``,
``state.json`` (pending / running / requeued / done / failed, error one-liner, attempts,
timestamps) and ``submission.json``. Whether a job is *done* is read from its units' files,
never from ``state.json``. Jobs are ``submitit.helpers.Checkpointable``: a preempted or
timed-out job is requeued and continues where it stopped. Notebooks 04 and 05 run once,
side by side, in the submitting process, when every job is done.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pandas as pd
import submitit

from . import reproduction, store, workbook
from .files import NOTEBOOKS, REPO, read_json, read_table, write_json
from .progress import bar
from .settings import Grid, grid_fields

EXECUTORS = ("inprocess", "local", "slurm")
# submitit's LocalExecutor stops a job after 2 minutes unless told otherwise; a unit of the
# paper profile trains for hours, so the local default is a week (jobs requeue after it).
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
SLURM_TIMEOUT_MIN = 24 * 60  # a common partition limit; longer jobs are requeued and resume
SLURM_PARALLEL = 32  # array tasks at a time (``#SBATCH --array=0-N%32``)
SLURM_GPUS = 1
SLURM_CPUS = 8
MAX_REQUEUES = 5  # time-limit requeues per job (preemptions do not count; submitit's rule)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

ALIVE = ("pending", "running", "requeued")  # states of a job that is (or may be) in a queue
RERUN = ("missing", "failed", "interrupted")  # what a resubmission runs again
STATES = ("done", *ALIVE, *RERUN)
# Training-set sizes before the validation split, for :func:`estimate` without reading data
# (the synthetic size is lib.data.load_data's default).
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "fashion-mnist": 60_000, "synthetic": 512}


# ------------------------------------------------------------------------------ notebooks
FINAL = "04_figures"
REPRODUCTION = "05_reproduction"
FINALS = (FINAL, REPRODUCTION)  # run once, in the submitting process, when every job is done
NOTEBOOK_ORDER = (*workbook.STAGES, *FINALS)
# Parameters a notebook has beside the grid's, with their literal defaults and help.
_DENSITY = ("density", "float", 0.1, "fraction of weights kept; one density per papermill run")
_PROGRESS = ("progress", "bool", True, "show progress bars (the runner turns them off under papermill)")
_RECORD = ("record_datasets", "list", ["cifar10"], "datasets of the published record to compare with: cifar10, cifar100")


def notebook_parameters_spec(notebook: str) -> list[tuple[str, str, object, str]]:
    """(name, type, default, help) of every parameter ``notebook`` declares, in cell order.

    Notebooks 01-03 take one ``density`` instead of the grid's ``densities`` and write no
    figures; 04 takes the whole grid. Defaults and help come from :class:`lib.settings.Grid`.
    """
    if notebook not in NOTEBOOK_ORDER:
        raise ValueError(f"unknown notebook {notebook!r}; choose one of {', '.join(NOTEBOOK_ORDER)}")
    out = []
    for name, f in grid_fields().items():
        if notebook not in FINALS and name in ("densities", "figures_dir"):
            if name == "densities":
                out.append(_DENSITY)
            continue
        # papermill reads simple annotations only: lists for tuples, object for unions
        kind = "list" if f.type.startswith("tuple") else "object" if "|" in f.type else f.type
        out.append((name, kind, f.default, f.metadata["help"]))
    if notebook == REPRODUCTION:
        out.append(_RECORD)
    if notebook != FINAL:
        out.append(_PROGRESS)
    return out


def parameters_cell(notebook: str) -> str:
    """The source of ``notebook``'s ``parameters`` cell: typed literals with a help comment."""
    lines = []
    for name, kind, default, help_text in notebook_parameters_spec(notebook):
        value = list(default) if isinstance(default, tuple) else default
        lines.append(f"{name}: {kind} = {value!r}  # {help_text}")
    return "\n".join(lines)


def stale_parameter_cells(write: bool = False) -> list[str]:
    """The notebooks whose ``parameters`` cell differs from :func:`parameters_cell`;
    with ``write``, those cells are rewritten (the rest of each notebook is left as it is)."""
    import nbformat

    stale = []
    for notebook in NOTEBOOK_ORDER:
        path = NOTEBOOKS / f"{notebook}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        if cell.source != parameters_cell(notebook):
            stale.append(notebook)
            if write:
                cell.source = parameters_cell(notebook)
                nbformat.write(nb, path)
    return stale


class NotebookError(RuntimeError):
    """A notebook raised: ``ename: evalue`` of its error, and the executed notebook to read."""

    def __init__(self, ename: str, evalue: str, notebook: Path):
        self.ename, self.evalue, self.notebook = ename, evalue, notebook
        self.message = " ".join(f"{ename}: {evalue}".split())
        super().__init__(f"{self.message} (details: {notebook})")


def notebook_parameters(notebook: str, values: dict) -> dict:
    """The subset of ``values`` that ``notebook`` declares (tuples as lists, for papermill)."""
    declared = {name for name, *_ in notebook_parameters_spec(notebook)}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k in declared}


def _ipc_kernel_manager(log: Path | None = None):
    """A kernel manager whose kernels talk over local IPC sockets instead of TCP: nothing
    listens on a network port, and ipykernel does not warn about unencrypted TCP. With
    ``log``, the kernel's own messages (its stderr: start-up and shutdown notices, not the
    cells' output, which goes into the notebook) are appended to that file instead of the
    terminal of whoever runs the grid."""
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.transport = "ipc"
            # Socket files (removed at shutdown) in the temp folder, not the working directory,
            # named uniquely per kernel: two kernels on one path (04 and 05 run side by side)
            # would read each other's messages.
            self.ip = str(Path(tempfile.gettempdir()) / f"pai-kernel-{os.getpid()}-{uuid.uuid4().hex[:12]}")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if log is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(log, "ab") as stderr:  # the kernel process keeps its own copy of the handle
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stderr": stderr})

    return IPCKernelManager


class SharedKernel:
    """The IPC kernel that :func:`execute` runs notebooks in. Shared by notebooks run one after
    another (a job's 01 -> 03), its start-up and imports (torch, pandas, seaborn: 9-11 s a
    notebook on a 2-core machine) are paid once instead of once a notebook. Each notebook after
    the first starts from an empty namespace (IPython's ``%reset -f``), as it would in a kernel
    of its own; imported modules stay, which is the point. The kernel's stderr goes to ``log``
    (removed if empty).

        with SharedKernel(folder / "kernel.log") as kernel:
            for name in stages:
                execute(name, grid, folder / f"{name}.ipynb", kernel=kernel)
    """

    def __init__(self, log: Path | None = None, cwd: Path = REPO):
        self.log, self.cwd = log, cwd
        self._km = None
        self._used = False

    def __enter__(self) -> "SharedKernel":
        from jupyter_core.utils import run_sync

        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        km = _ipc_kernel_manager(self.log)(kernel_name="python3")
        # as nbclient starts the kernels it owns: IPython's history in memory, not in a
        # sqlite file that kernels running side by side would lock for each other
        run_sync(km.start_kernel)(extra_arguments=["--HistoryManager.hist_file=:memory:"], cwd=str(self.cwd))
        self._km = km
        return self

    def __exit__(self, *exc) -> None:
        from jupyter_core.utils import run_sync

        km, self._km = self._km, None
        try:
            if run_sync(km.is_alive)():
                run_sync(km.shutdown_kernel)()
        finally:
            run_sync(km.cleanup_resources)()
            if self.log is not None and self.log.exists() and self.log.stat().st_size == 0:
                self.log.unlink()

    def manager(self):
        """The kernel manager for papermill's next notebook, its namespace emptied if used before."""
        if self._km is None:
            raise RuntimeError("SharedKernel is not started: use it in a with block")
        if self._used:
            self._run("%reset -f")
        self._used = True
        return self._km

    def _run(self, code: str) -> None:
        from jupyter_core.utils import run_sync

        kc = self._km.client()
        kc.start_channels()
        try:
            run_sync(kc.wait_for_ready)(timeout=60)
            reply = run_sync(kc.execute_interactive)(code, silent=True, store_history=False, timeout=60)
        finally:
            kc.stop_channels()
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the shared kernel could not run {code!r}: {reply['content'].get('evalue')}")


def execute(notebook: str, grid: Grid, output: Path, kernel: SharedKernel | None = None, **extra) -> Path:
    """Run one notebook with papermill, with the grid's parameters (and ``extra``), in
    ``kernel`` or in a kernel of its own (its stderr in ``<output>.kernel.log``)."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    if kernel is None:
        with SharedKernel(output.with_suffix(".kernel.log")) as own:
            return execute(notebook, grid, output, kernel=own, **extra)
    params = notebook_parameters(notebook, {**grid.values(), "progress": False, **extra})
    try:
        papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(output), parameters=params,
                                   cwd=str(REPO), progress_bar=False, km=kernel.manager())
    except papermill.PapermillExecutionError as err:  # the kernel's traceback is in ``output``
        raise NotebookError(err.ename, err.evalue, output) from None
    return output


def final_notebook(grid: Grid, notebook: str = FINAL) -> Path:
    return grid.root / "notebooks" / f"{notebook}.ipynb"


def run_finals(grid: Grid) -> Path:
    """Notebooks 04 and 05 (figures and claims; the reproduction report), side by side when
    the machine has the cores (they read the same tables and write different files); 04's
    output. The first error is raised once both have ended."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(len(FINALS), os.cpu_count() or 1))) as pool:
        futures = [pool.submit(execute, nb, grid, final_notebook(grid, nb)) for nb in FINALS]
    for future in futures:
        future.result()
    return final_notebook(grid)


def run_inprocess(grid: Grid, progress: bool = True) -> Path:
    """The whole profile from this process: 01-03 for every density with papermill, then 04."""
    _prefetch_data(grid)  # a missing dataset fails here, with the library's own message
    out_dir = grid.root / "notebooks"
    todo = [(nb, d) for d in grid.densities for nb in workbook.STAGES]
    with SharedKernel(out_dir / "kernel.log") as kernel:
        for nb, density in bar(todo, enabled=progress, desc=grid.profile):
            execute(nb, grid, out_dir / f"d{density:g}" / f"{nb}.ipynb", kernel=kernel, density=density)
    return run_finals(grid)


@contextlib.contextmanager
def environment(threads: int | None = None, cuda_devices: str | None = None) -> Iterator[None]:
    """Set the thread variables (and ``CUDA_VISIBLE_DEVICES``) for the kernels started inside
    the block; the variables are restored afterwards."""
    wanted = {var: str(threads) for var in THREAD_VARS} if threads else {}
    if cuda_devices is not None:
        wanted["CUDA_VISIBLE_DEVICES"] = cuda_devices
    before = {var: os.environ.get(var) for var in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for var, value in before.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


# ------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class JobSpec:
    """One job: notebooks 01-03 for one architecture, dataset, density and seed."""

    arch: str
    dataset: str
    density: float
    seed: int

    @property
    def label(self) -> str:
        return f"{self.arch}-{self.dataset}-d{self.density:g}-s{self.seed}"


def jobs(grid: Grid) -> list[JobSpec]:
    """Every job of ``grid``, architecture-major (the order of the SLURM array)."""
    return [JobSpec(arch, grid.dataset, density, seed)
            for arch in grid.archs for density in grid.densities for seed in grid.seeds]


def job_grid(grid: Grid, spec: JobSpec) -> Grid:
    """The grid of one job: ``grid`` narrowed to its architecture, density and seed."""
    if spec.dataset != grid.dataset:
        raise ValueError(f"job {spec.label} is for {spec.dataset!r} but the grid is {grid.dataset!r}")
    return dataclasses.replace(grid, archs=(spec.arch,), seeds=(spec.seed,), densities=(spec.density,))


def job_dir(grid: Grid, spec: JobSpec) -> Path:
    """The folder of one job: executed notebooks, ``job.log``, ``state.json``.

    The name ends with the hash of the job's grid without its folder names, so a job of other
    settings (say, more epochs) in the same ``runs_dir`` never reads this job's state.
    """
    g = dataclasses.replace(job_grid(grid, spec), profile="", runs_dir="", data_dir="", figures_dir="")
    return store.job_dir(grid.root, spec.label, g)


def submitit_dir(grid: Grid) -> Path:
    return store.submitit_dir(grid.root)


def job_reference(grid: Grid, spec: JobSpec) -> Grid | None:
    """The full-size CIFAR-10 masks of 05 that this job draws and measures (None: none): the
    grid's ``reference_densities`` spread over its jobs, so that they run in parallel."""
    return reproduction.job_reference(grid, spec.arch, spec.density, spec.seed)


def is_done(grid: Grid, spec: JobSpec) -> bool:
    """Whether every unit of the job is finished (from the units' files)."""
    g = job_grid(grid, spec)
    reference = job_reference(grid, spec)
    return (all(workbook.stage_done(g, spec.density, stage) for stage in workbook.STAGES)
            and (reference is None or reproduction.reference_done(reference)))


# ------------------------------------------------------------------------------ state
def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def read_state(folder: Path) -> dict | None:
    path = folder / store.JOB_STATE
    return read_json(path) if path.exists() else None


def _write_state(folder: Path, spec: JobSpec, state: str, **fields) -> dict:
    """Replace the job's state with ``state``, keeping its history fields (attempts, started)."""
    old = read_state(folder) or {}
    keep = {k: old[k] for k in ("attempts", "started", "submitted", "executor") if k in old}
    record = {**keep, "job": dataclasses.asdict(spec), "state": state, "error": None,
              "log": str(folder / store.JOB_LOG), "updated": _now(), **fields}
    write_json(folder / store.JOB_STATE, record)
    return record


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An error as one line: the notebook's exception for papermill errors, else type: message."""
    if hasattr(exc, "ename") and hasattr(exc, "evalue"):  # papermill.PapermillExecutionError
        text = f"{exc.ename}: {exc.evalue}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _process_alive(pid: int) -> bool:
    import psutil  # a dependency of ipykernel

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# sacct states after which a SLURM job will not run again by itself.
_SLURM_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT")


def _alive(submission: dict | None) -> bool:
    """Whether the job's submitit job may still run. Only what can be checked is checked:
    a local job on this host by its controller's process, a SLURM job through ``sacct``; in
    doubt (another host, no ``sacct``) it counts as alive, so it is not submitted twice."""
    if not submission:
        return False
    if submission.get("executor") == "local":
        if submission.get("host") != socket.gethostname():
            return True
        return _process_alive(int(submission["job_id"]))
    if submission.get("executor") == "slurm":
        import shutil

        if shutil.which("sacct") is None:
            return True
        from submitit.slurm.slurm import SlurmInfoWatcher

        state = SlurmInfoWatcher(delay_s=0).get_state(str(submission["job_id"]), mode="force")
        return not state.upper().startswith(_SLURM_ENDED)
    return False


def job_status(grid: Grid, spec: JobSpec) -> dict:
    """One row of :func:`status`: the job's keys, state, attempts, error and log path."""
    folder = job_dir(grid, spec)
    state = read_state(folder) or {}
    row = {**dataclasses.asdict(spec), "state": "missing", "attempts": state.get("attempts", 0),
           "error": state.get("error") or "", "log": str(folder / store.JOB_LOG)}
    if is_done(grid, spec):
        row.update(state="done", error="")
    elif state.get("state") in ALIVE:
        sub_path = folder / store.JOB_SUBMISSION
        submission = read_json(sub_path) if sub_path.exists() else None
        if _alive(submission):
            row["state"] = state["state"]
        else:
            row.update(state="interrupted",
                       error=f"its process is gone (killed?) while {state['state']}; resubmit to resume")
    elif state.get("state") == "failed":
        row["state"] = "failed"
    return row


def status(grid: Grid) -> pd.DataFrame:
    """One row per job: arch, dataset, density, seed, state, attempts, error, log.

    ``done`` comes from the units' files; ``pending``, ``running``, ``requeued`` and
    ``failed`` from the job's ``state.json``; ``interrupted`` is a pending or running job
    whose process is gone; ``missing`` was never submitted (or its units were removed).
    """
    return pd.DataFrame([job_status(grid, spec) for spec in jobs(grid)],
                        columns=["arch", "dataset", "density", "seed", "state", "attempts", "error", "log"])


def counts(table: pd.DataFrame) -> dict[str, int]:
    """Jobs per state, every state listed (zeros included) in a fixed order."""
    return {s: int((table["state"] == s).sum()) for s in STATES}


# ------------------------------------------------------------------------------ the job
def _job_logger(folder: Path) -> logging.Logger:
    """A logger writing to the job's ``job.log`` (appending across attempts) and to stderr
    (which submitit keeps in its own log)."""
    logger = logging.getLogger(f"lib.scaleout.job.{folder.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        folder.mkdir(parents=True, exist_ok=True)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        for handler in (logging.FileHandler(folder / store.JOB_LOG), logging.StreamHandler(sys.stderr)):
            handler.setFormatter(fmt)
            logger.addHandler(handler)
    return logger


def _stop_children(pid: int, grace_s: float = 3.0) -> list[int]:
    """Terminate every descendant of ``pid`` (then kill what is left after ``grace_s``);
    returns their pids. A job's descendants are its papermill kernels: a requeued job must
    not leave one training on while the next attempt resumes from the same checkpoint."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    def running(proc) -> bool:  # a zombie has stopped; its parent reaps it
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    deadline = time.monotonic() + grace_s
    while any(running(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    for child in filter(running, children):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    return [c.pid for c in children]


class UnitJob(submitit.helpers.Checkpointable):
    """What a submitit job runs: the notebooks 01-03 of one :class:`JobSpec`.

    ``threads`` goes into ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS``
    before papermill starts a kernel (the kernel inherits the environment), so that jobs
    sharing a machine split its cores instead of oversubscribing them. ``cuda_devices``, when
    given, becomes ``CUDA_VISIBLE_DEVICES`` (submitit's local executor would give every job
    the same GPUs). ``notebooks=False`` calls :func:`lib.workbook.prune_density`,
    :func:`~lib.workbook.train_density` and :func:`~lib.workbook.metrics_density` in the job's
    own process instead of executing the notebooks: the same units, without the seconds that
    each papermill kernel costs (tests), and without executed notebooks.
    """

    def __init__(self, grid: Grid, spec: JobSpec, threads: int | None = None,
                 cuda_devices: str | None = None, notebooks: bool = True):
        self.grid, self.spec = grid, spec
        self.threads, self.cuda_devices, self.notebooks = threads, cuda_devices, notebooks

    @property
    def folder(self) -> Path:
        return job_dir(self.grid, self.spec)

    def _info(self) -> dict:
        info = {"host": socket.gethostname(), "pid": os.getpid(), "threads": self.threads,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        with contextlib.suppress(RuntimeError, KeyError):  # outside a submitit job (called directly)
            env = submitit.JobEnvironment()
            info.update(submitit_job_id=env.job_id, stdout=str(env.paths.stdout), stderr=str(env.paths.stderr))
        return info

    def _run_stages(self, log: logging.Logger) -> None:
        g, density = job_grid(self.grid, self.spec), self.spec.density
        if self.threads:  # for the work done in this process (the kernels read the environment)
            import torch

            torch.set_num_threads(self.threads)  # torch may be imported already here
        if not self.notebooks:
            for name in workbook.STAGES:
                start = time.perf_counter()
                workbook.STAGE_FUNCTIONS[name](g, density, progress=False)
                log.info("%s done in %.1f s (in the job's process)", name, time.perf_counter() - start)
        else:
            with contextlib.ExitStack() as stack:
                kernel = None  # one for the job's notebooks, started by the first that runs
                for name in workbook.STAGES:
                    output = self.folder / f"{name}.ipynb"
                    if output.exists() and workbook.stage_done(g, density, name):
                        log.info("%s: units done and notebook executed already, skipped", name)
                        continue
                    start = time.perf_counter()
                    if kernel is None:
                        kernel = stack.enter_context(SharedKernel(self.folder / "kernel.log"))
                    execute(name, g, output, kernel=kernel, density=density)
                    log.info("%s done in %.1f s: %s", name, time.perf_counter() - start, output)
        reference = job_reference(self.grid, self.spec)
        if reference is not None and not reproduction.reference_done(reference):
            start = time.perf_counter()
            workbook.metrics_density(reference, density, progress=False)
            log.info("05's full-size %s masks (%s) done in %.1f s (in the job's process)", reference.dataset,
                     ", ".join(reference.methods), time.perf_counter() - start)

    def __call__(self) -> str:
        with environment(self.threads, self.cuda_devices):
            return self._attempt()

    def _attempt(self) -> str:
        folder, spec = self.folder, self.spec
        log = _job_logger(folder)
        attempts = (read_state(folder) or {}).get("attempts", 0) + 1
        info = self._info()
        _write_state(folder, spec, "running", attempts=attempts, started=_now(), **info)
        log.info("attempt %d of %s on %s (pid %d, threads %s, CUDA_VISIBLE_DEVICES=%s)", attempts,
                 spec.label, info["host"], info["pid"], self.threads, info["cuda_visible_devices"])
        try:
            if is_done(self.grid, spec):
                log.info("every unit is done already: nothing to run")
            else:
                self._run_stages(log)
        except Exception as exc:  # recorded, then raised so that submitit/SLURM see a failure
            log.error("failed: %s\n%s", _one_line(exc), traceback.format_exc())
            _write_state(folder, spec, "failed", error=_one_line(exc), finished=_now(), **info)
            raise
        _write_state(folder, spec, "done", finished=_now(), **info)
        log.info("done")
        return "done"

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption or time-out: stop this attempt's kernels and
        requeue the same job; the next attempt resumes from the units' files."""
        folder = self.folder
        stopped = _stop_children(os.getpid())
        _write_state(folder, self.spec, "requeued", requeued=_now())
        _job_logger(folder).warning("preempted or timed out: requeued (stopped processes %s)", stopped)
        return super().checkpoint(*args, **kwargs)


# ------------------------------------------------------------------------------ executors
@dataclass(frozen=True)
class Options:
    """How to run a grid's jobs. ``None`` means the executor's default (module constants).

    ``parallel``: jobs at a time (local: processes, default 1; slurm: array tasks at a
    time, default 32). ``threads``: CPU threads per job (default: local, cores // parallel;
    slurm, ``cpus_per_job``). ``gpus``: local GPU ids to spread jobs over (default: the
    visible ones). ``timeout_min``: a job's time limit (local: a week; slurm: 24 h), after
    which it is requeued up to ``max_requeues`` times. SLURM only: ``partition`` (default:
    the cluster's), ``gpus_per_job``, ``cpus_per_job``, ``mem_gb`` (default: the cluster's),
    ``sbatch`` (extra ``#SBATCH --key=value`` lines), ``setup`` (shell lines before the job,
    e.g. ``module load cuda``). ``notebooks=False``: see :class:`UnitJob`.
    """

    executor: str = "inprocess"
    parallel: int | None = None
    threads: int | None = None
    gpus: tuple[int, ...] | None = None
    timeout_min: int | None = None
    partition: str | None = None
    gpus_per_job: int = SLURM_GPUS
    cpus_per_job: int = SLURM_CPUS
    mem_gb: float | None = None
    sbatch: Mapping[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    max_requeues: int = MAX_REQUEUES
    notebooks: bool = True
    poll_s: float | None = None

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; choose one of {', '.join(EXECUTORS)} (--executor)")
        for name in ("parallel", "threads", "timeout_min"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.gpus_per_job < 0 or self.cpus_per_job < 1:
            raise ValueError(f"--gpus-per-job must be >= 0 and --cpus-per-job >= 1, got "
                             f"{self.gpus_per_job} and {self.cpus_per_job}")
        if self.gpus is not None:
            object.__setattr__(self, "gpus", tuple(int(g) for g in self.gpus))
        object.__setattr__(self, "setup", tuple(self.setup))
        object.__setattr__(self, "sbatch", dict(self.sbatch))

    @property
    def jobs_at_a_time(self) -> int:
        return self.parallel or (SLURM_PARALLEL if self.executor == "slurm" else 1)

    @property
    def job_threads(self) -> int:
        if self.threads:
            return self.threads
        if self.executor == "slurm":
            return self.cpus_per_job
        return max(1, (os.cpu_count() or 1) // self.jobs_at_a_time)

    @property
    def time_limit_min(self) -> int:
        return self.timeout_min or (SLURM_TIMEOUT_MIN if self.executor == "slurm" else LOCAL_TIMEOUT_MIN)

    @property
    def poll_seconds(self) -> float:
        # sacct is asked at most once a minute by submitit anyway; local processes are cheap to poll
        return self.poll_s or (60.0 if self.executor == "slurm" else 1.0)


def slurm_parameters(grid: Grid, options: Options) -> dict:
    """The parameters given to ``submitit.SlurmExecutor.update_parameters`` (sbatch names)."""
    params = {
        "job_name": f"pai-{grid.profile}",
        "time": options.time_limit_min,
        "gpus_per_node": options.gpus_per_job,
        "cpus_per_task": options.cpus_per_job,
        "array_parallelism": options.jobs_at_a_time,
        "ntasks_per_node": 1,
    }
    if options.partition:
        params["partition"] = options.partition
    if options.mem_gb:
        gb = options.mem_gb
        params["mem"] = f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"
    if options.sbatch:
        params["additional_parameters"] = dict(options.sbatch)
    if options.setup:
        params["setup"] = list(options.setup)
    return params


def make_executor(grid: Grid, options: Options) -> submitit.Executor:
    """The submitit executor of ``options`` (``local`` or ``slurm``), time limit set."""
    folder = submitit_dir(grid)
    if options.executor == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=options.max_requeues)
        ex.update_parameters(timeout_min=options.time_limit_min)
        return ex
    if options.executor == "slurm":
        # SlurmExecutor, not AutoExecutor: without SLURM this must fail, not run locally.
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_requeues)
        ex.update_parameters(**slurm_parameters(grid, options))
        return ex
    raise ValueError(f"executor {options.executor!r} runs in this process: call run_inprocess")


@dataclass
class Submitted:
    """A job handed to submitit."""

    spec: JobSpec
    job: submitit.Job


def submit(grid: Grid, specs: Sequence[JobSpec], options: Options,
           executor: submitit.Executor | None = None, cuda_devices: str | None = None) -> list[Submitted]:
    """Submit ``specs`` now (SLURM: as one array), recording each as pending first."""
    executor = executor or make_executor(grid, options)
    for spec in specs:
        _write_state(job_dir(grid, spec), spec, "pending", submitted=_now(), executor=options.executor)
    calls = [UnitJob(grid, spec, threads=options.job_threads, cuda_devices=cuda_devices,
                     notebooks=options.notebooks) for spec in specs]
    batch = executor.batch() if options.executor == "slurm" and len(calls) > 1 else contextlib.nullcontext()
    with batch:
        handles = [executor.submit(call) for call in calls]
    out = []
    for spec, job in zip(specs, handles):
        # A file of its own: the job may already be writing state.json.
        write_json(job_dir(grid, spec) / store.JOB_SUBMISSION, {
            "executor": options.executor, "job_id": str(job.job_id), "host": socket.gethostname(),
            "submitit_folder": str(submitit_dir(grid)), "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr), "submitted": _now()})
        out.append(Submitted(spec, job))
    return out


def _settle(grid: Grid, sub: Submitted) -> str:
    """After a job's process ended: its final state, recording a failure if it died before
    recording anything itself (killed, out of memory)."""
    folder = job_dir(grid, sub.spec)
    state = read_state(folder) or {}
    if is_done(grid, sub.spec):
        return "done"
    if state.get("state") in ALIVE:
        _write_state(folder, sub.spec, "failed", finished=_now(),
                     error=f"the job's process ended without recording a result; see {sub.job.paths.stderr}")
        return "failed"
    return state.get("state", "failed")


def _status_line(grid: Grid, spec: JobSpec, state: str) -> str:
    """One line for a job that has ended: its state, label, wall time, and the error's line."""
    record = read_state(job_dir(grid, spec)) or {}
    seconds = ""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        took = datetime.datetime.fromisoformat(record["finished"]) - datetime.datetime.fromisoformat(record["started"])
        seconds = f" in {took.total_seconds():.0f} s"
    line = f"{state:6} {spec.label}{seconds}"
    if state != "done" and record.get("error"):
        line += f": {record['error']} (details: {record.get('log', job_dir(grid, spec) / store.JOB_LOG)})"
    return line


def _local_gpus(options: Options) -> tuple[str, ...]:
    """GPU ids for local jobs: ``options.gpus``, else this process's visible GPUs (their
    ``CUDA_VISIBLE_DEVICES`` names, so that a restricted set stays restricted)."""
    if options.gpus is not None:
        return tuple(str(g) for g in options.gpus)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(v for v in visible.split(",") if v.strip())
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


# Relative cost of one job per architecture (quick profile: a VGG-16 job took about twice a
# ResNet-34 one, job.log), to start the long jobs first.
_JOB_COST = {"vgg16": 2.0, "resnet34": 1.0}


def local_order(todo: Sequence[JobSpec], first: Sequence[float] = ()) -> list[JobSpec]:
    """The order a few local slots take jobs in: density by density (the densities in
    ``first`` first: their jobs also draw 05's full-size masks, the longest work), the
    costlier architecture first within each. Two jobs of one architecture then rarely start
    together (both would compute that architecture's density-free scores, which the first
    caches), and the grid does not end with the long jobs of one architecture running alone."""
    densities = list(dict.fromkeys(s.density for s in todo))
    densities = [d for d in densities if d in first] + [d for d in densities if d not in first]
    rank = {d: i for i, d in enumerate(densities)}
    return sorted(todo, key=lambda s: (rank[s.density], s.seed, -_JOB_COST.get(s.arch, 1.0), s.arch))


def _run_local(grid: Grid, todo: list[JobSpec], options: Options, progress: bool) -> list[Submitted]:
    """Keep ``options.jobs_at_a_time`` local jobs running until ``todo`` is done, in
    :func:`local_order`; job k of the slots running at once gets GPU ``k mod len(gpus)``."""
    executor = make_executor(grid, options)
    gpus = _local_gpus(options)
    queue, running, finished = local_order(todo, grid.reference_densities), {}, []
    shown = bar(enabled=progress, total=len(todo), desc=f"{grid.profile} (local, {options.jobs_at_a_time} at a time)",
                unit="job")
    try:
        while queue or running:
            for slot, sub in list(running.items()):
                if sub.job.done():
                    shown.write(_status_line(grid, sub.spec, _settle(grid, sub)))
                    finished.append(running.pop(slot))
                    shown.update(1)
            for slot in range(options.jobs_at_a_time):
                if slot not in running and queue:
                    cuda = gpus[slot % len(gpus)] if gpus else None
                    running[slot] = submit(grid, [queue.pop(0)], options, executor, cuda_devices=cuda)[0]
            if running:
                time.sleep(options.poll_seconds)
    except BaseException:
        # Ctrl-C or an error here: local jobs outlive this process unless stopped.
        for sub in running.values():
            sub.job.cancel(check=False)
        raise
    finally:
        shown.close()
    return finished


def _wait(grid: Grid, submitted: list[Submitted], options: Options, progress: bool) -> None:
    pending = list(submitted)
    shown = bar(enabled=progress, total=len(pending), desc=f"{grid.profile} ({options.executor})", unit="job")
    try:
        while pending:
            for sub in [s for s in pending if s.job.done()]:
                shown.write(_status_line(grid, sub.spec, _settle(grid, sub)))
                pending.remove(sub)
                shown.update(1)
            if pending:
                time.sleep(options.poll_seconds)
    finally:
        shown.close()


def _prefetch_data(grid: Grid) -> None:
    """Read (download, if needed) the dataset once here: jobs downloading CIFAR in parallel
    would write over each other's archive."""
    from .data import load_data

    load_data(grid.dataset, root=grid.data_root)  # the files are the same for any split


@dataclass
class GridRun:
    """What :func:`run_grid` did: jobs submitted now, jobs left alone because they are
    already queued or running, the status afterwards, and 04's executed notebook if it ran."""

    submitted: list[JobSpec]
    alive: list[JobSpec]
    status: pd.DataFrame
    figures: Path | None

    @property
    def complete(self) -> bool:
        return bool((self.status["state"] == "done").all())


def _figures_stale(grid: Grid) -> bool:
    """Whether 04 or 05 has not run since the last job finished."""
    outs = [final_notebook(grid, nb) for nb in FINALS]
    if not all(out.exists() for out in outs):
        return True
    states = [job_dir(grid, s) / store.JOB_STATE for s in jobs(grid)]
    newest = max((p.stat().st_mtime for p in states if p.exists()), default=0.0)
    return newest > min(out.stat().st_mtime for out in outs)


def run_grid(grid: Grid, options: Options, progress: bool = True, wait: bool = True,
             figures: bool = True) -> GridRun:
    """Run the grid's missing, failed and interrupted jobs on ``options.executor``, then 04.

    Jobs that are done are skipped; jobs still pending or running (in an earlier submission)
    are left alone. With ``wait`` (always, for ``local``), returns when the submitted jobs
    have ended; then, if every job is done and ``figures``, notebook 04 runs here (once: not
    again if no job finished since). ``inprocess`` is :func:`run_inprocess`.
    """
    if options.executor == "inprocess":
        with environment(options.threads):
            final = run_inprocess(grid, progress=progress)
        table = status(grid)
        return GridRun(submitted=[], alive=[], status=table, figures=final)

    table = status(grid)
    specs = {s.label: s for s in jobs(grid)}
    labels = [JobSpec(r.arch, r.dataset, r.density, r.seed).label for r in table.itertuples()]
    todo = [specs[k] for k, state in zip(labels, table["state"]) if state in RERUN]
    alive = [specs[k] for k, state in zip(labels, table["state"]) if state in ALIVE]
    if todo:
        _prefetch_data(grid)
        if options.executor == "local":
            _run_local(grid, todo, options, progress)
        else:
            submitted = submit(grid, todo, options)
            if wait:
                _wait(grid, submitted, options, progress)
    table = status(grid)
    final = None
    if figures and (table["state"] == "done").all() and _figures_stale(grid):
        final = run_finals(grid)
    return GridRun(submitted=todo, alive=alive, status=table, figures=final)


# ------------------------------------------------------------------------------ estimate
def images_per_epoch(grid: Grid) -> int:
    """Training images seen per epoch: the split of :func:`lib.data.load_data`, full batches."""
    if grid.dataset not in TRAIN_IMAGES:
        raise ValueError(f"no training-set size for {grid.dataset!r}; known: {', '.join(TRAIN_IMAGES)}")
    n = TRAIN_IMAGES[grid.dataset]
    rest = n - int(round(grid.val_fraction * n))
    if grid.train_fraction < 1:
        rest = max(1, int(round(grid.train_fraction * rest)))
    return rest // grid.batch_size * grid.batch_size


def throughput_from_bench(csv: str | Path) -> dict[str, float]:
    """Masked-training images/s per architecture from ``bench/bench_train.py``'s table."""
    table = read_table(csv)
    return {row.arch: float(row.workbook_img_s) for row in table.itertuples()}


def estimate(grid: Grid, throughput: Mapping[str, float]) -> pd.DataFrame:
    """Training hours per job: runs × epochs × images per epoch / images per second.

    ``throughput``: images/s of the masked training step per architecture, as measured by
    ``bench/bench_train.py`` on the machine that will train. Evaluation (validation and
    test set after every epoch), pruning and metrics are not counted: a lower bound.
    """
    missing = [a for a in grid.archs if a not in throughput]
    if missing:
        raise ValueError(f"no throughput for {', '.join(missing)}; pass --throughput ARCH=IMG_PER_S "
                         "or --bench bench/results/bench_train.csv (python bench/bench_train.py)")
    per_epoch = images_per_epoch(grid)
    rows = []
    for spec in jobs(grid):
        runs = len(job_grid(grid, spec).train_runs(spec.density))
        seconds = runs * grid.epochs * per_epoch / throughput[spec.arch]
        rows.append({**dataclasses.asdict(spec), "training_runs": runs, "epochs": grid.epochs,
                     "images_per_epoch": per_epoch, "img_per_s": throughput[spec.arch],
                     "hours": seconds / 3600})
    return pd.DataFrame(rows)
