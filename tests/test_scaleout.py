"""Scale-out through submitit: local jobs give exactly the in-process tables; a killed job and
a preempted job resume from their checkpoints with the same history; a failing job is
recorded while the rest goes on, and resubmission runs only what is missing; the SLURM
script carries the options (fake ``srun``/``sbatch`` on PATH: no SLURM here).

Every grid is tiny (synthetic data, ResNet-34 at 1/16 width) and every job runs on one CPU
thread, as does the in-process reference, so the numbers must agree exactly.
"""
import contextlib
import json
import os
import signal
import sys
import time

import psutil
import pytest
import torch
from pandas.testing import assert_frame_equal

from lib import cli, reproduction, scaleout, store, workbook
from lib.files import read_table
from lib.settings import Grid

TINY = dict(
    profile="tiny-scale", archs=["resnet34"], no_skip=True, dataset="synthetic", methods=["Rand", "SNIP"],
    densities=[0.1, 0.4], seeds=[1], metric_width=0.0625, train_width=0.0625, scoring_batches=1,
    scoring_batch_size=16, rounds=2, epochs=1, milestones=[1, 1], batch_size=32, train_fraction=1.0,
    reference_densities=[],
)
# One training run of 4 epochs: long enough to be interrupted after its first epoch.
RESUME = dict(methods=["Rand"], no_skip=False, densities=[0.1], epochs=4, milestones=[2, 3])


def make_grid(root, **overrides) -> Grid:
    return Grid(**{**TINY, **overrides}, runs_dir=str(root), figures_dir=str(root / "figures"))


def labels(specs) -> list[str]:
    return sorted(s.label for s in specs)


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_in_process(grid: Grid) -> None:
    """The reference: the functions notebooks 01-03 call, in this process, on one thread
    (reset before each call, as each job's kernel starts with one)."""
    for density in grid.densities:
        for fn in (workbook.prune_density, workbook.train_density, workbook.metrics_density):
            with one_thread():
                fn(grid, density, progress=False)


def wait_for(condition, timeout_s: float = 240.0, every_s: float = 0.02):
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"condition not met in {timeout_s} s")


def history_rows(path) -> int:
    return len(read_table(path)) if path.exists() else 0


def the_training_run(grid):
    (run,) = [r for d in grid.densities for r in grid.train_runs(d)]
    return store.train_dir(grid.root, run)


def grid_args(grid) -> list[str]:
    """``--set`` values that turn the smoke profile into ``grid`` (for the CLI)."""
    values = grid.values()
    return [f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in values.items()]


# ------------------------------------------------------------------------------ local executor
def test_local_executor_gives_the_inprocess_tables(tmp_path, capsys, monkeypatch):
    reference = make_grid(tmp_path / "inprocess")
    run_in_process(reference)
    # The job of density 0.1 also draws and measures 05's full-size CIFAR-10 Rand mask (the
    # reference's only method here: SNIP would need CIFAR-10 on disk).
    grid = make_grid(tmp_path / "local", reference_densities=[0.1])
    options = scaleout.Options(executor="local", parallel=2, threads=1)
    # 04 runs in this process: record when it is called instead of drawing (test_workbook's
    # smoke test executes it; here it would add 20 s). The jobs' own processes are untouched.
    finals, execute = [], scaleout.execute

    def record_final(notebook, g, output, **extra):
        if notebook not in scaleout.FINALS:
            return execute(notebook, g, output, **extra)
        finals.append((notebook, scaleout.counts(scaleout.status(g))["done"]))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")
        return output

    monkeypatch.setattr(scaleout, "execute", record_final)

    out = scaleout.run_grid(grid, options, progress=False)

    specs = scaleout.jobs(grid)
    assert labels(out.submitted) == labels(specs) == ["resnet34-synthetic-d0.1-s1", "resnet34-synthetic-d0.4-s1"]
    assert out.complete and out.figures == scaleout.final_notebook(grid)
    assert sorted(finals) == [("04_figures", 2), ("05_reproduction", 2)]  # once, after both jobs were done
    for spec in specs:
        folder = scaleout.job_dir(grid, spec)
        assert all((folder / f"{nb}.ipynb").exists() for nb in workbook.STAGES)  # papermill ran them
        state = scaleout.read_state(folder)
        assert (state["state"], state["attempts"], state["threads"], state["error"]) == ("done", 1, 1, None)
        assert state["log"] == str(folder / "job.log") and "03_spectral done" in (folder / "job.log").read_text()
    first = scaleout.job_reference(grid, specs[0])
    assert scaleout.job_reference(grid, specs[1]) is None
    assert (first.archs, first.methods, first.densities, first.metric_width) == (("resnet34",), ("Rand",), (0.1,), 1.0)
    assert reproduction.reference_done(first) and "05's full-size cifar10 masks (Rand)" in (
        scaleout.job_dir(grid, specs[0]) / "job.log").read_text()

    ours, theirs = workbook.collect(grid), workbook.collect(reference)
    assert ours["missing"].empty and theirs["missing"].empty
    for name in ("layers", "masks", "runs", "results"):
        assert len(ours[name]) > 0
        assert_frame_equal(ours[name], theirs[name], check_exact=True)
    for density in grid.densities:
        assert_frame_equal(workbook.histories(grid, density).drop(columns="epoch_seconds"),
                           workbook.histories(reference, density).drop(columns="epoch_seconds"), check_exact=True)

    # Submitting again runs nothing: no job, no unit, not even 04.
    files = [p for p in grid.root.rglob("*") if p.suffix in (".pt", ".json", ".csv", ".ipynb")]
    before = {p: p.stat().st_mtime_ns for p in files}
    again = scaleout.run_grid(grid, options, progress=False)
    assert again.submitted == [] and again.figures is None and again.complete and len(finals) == 2
    assert {p: p.stat().st_mtime_ns for p in files} == before

    capsys.readouterr()
    assert cli.main(["status", "--profile", "smoke", "--set", *grid_args(grid)]) == 0
    printed = capsys.readouterr().out
    assert "done 2, pending 0, running 0, requeued 0, missing 0, failed 0, interrupted 0 (of 2 jobs)" in printed
    assert str(scaleout.job_dir(grid, specs[0]) / "job.log") in printed


@pytest.fixture(scope="module")
def resume_reference(tmp_path_factory):
    """The uninterrupted in-process run that interrupted jobs must reproduce."""
    reference = make_grid(tmp_path_factory.mktemp("inprocess"), **RESUME)
    run_in_process(reference)
    return reference


def assert_resumed(run_dir, before, reference) -> None:
    """The run ended with the uninterrupted run's history, and resumed rather than restarted:
    the epochs finished before the interruption keep their recorded times."""
    final = read_table(run_dir / "history.csv")
    expected = read_table(the_training_run(reference) / "history.csv")
    assert_frame_equal(final.drop(columns="epoch_seconds"), expected.drop(columns="epoch_seconds"), check_exact=True)
    assert final["epoch_seconds"].iloc[: len(before)].tolist() == before["epoch_seconds"].tolist()


def test_killed_job_resumes_when_resubmitted(tmp_path, resume_reference):
    grid = make_grid(tmp_path / "local", **RESUME)
    # The job calls lib.workbook in its own process (no kernels): killing that process is a
    # kill in the middle of training.
    options = scaleout.Options(executor="local", threads=1, notebooks=False)
    (spec,) = scaleout.jobs(grid)
    run_dir = the_training_run(grid)

    (sub,) = scaleout.submit(grid, [spec], options)
    wait_for(lambda: history_rows(run_dir / "history.csv") >= 1)
    controller = psutil.Process(int(sub.job.job_id))
    for proc in controller.children(recursive=True) + [controller]:  # the job's processes only
        proc.kill()
    wait_for(lambda: sub.job.done())
    at_kill = read_table(run_dir / "history.csv")
    assert 1 <= len(at_kill) < grid.epochs
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()
    row = scaleout.status(grid).iloc[0]
    assert row["state"] == "interrupted" and "process is gone" in row["error"]

    out = scaleout.run_grid(grid, options, progress=False, figures=False)

    assert labels(out.submitted) == [spec.label] and out.complete
    assert len(read_table(run_dir / "history.csv")) == grid.epochs
    assert_resumed(run_dir, at_kill, resume_reference)
    state = scaleout.read_state(scaleout.job_dir(grid, spec))
    assert (state["state"], state["attempts"]) == ("done", 2)


def test_preempted_job_is_requeued_and_resumes(tmp_path, resume_reference):
    grid = make_grid(tmp_path / "local", **RESUME)
    options = scaleout.Options(executor="local", threads=1, notebooks=False)
    (spec,) = scaleout.jobs(grid)
    run_dir = the_training_run(grid)

    (sub,) = scaleout.submit(grid, [spec], options)
    wait_for(lambda: history_rows(run_dir / "history.csv") >= 1)
    at_signal = read_table(run_dir / "history.csv")
    assert not (run_dir / "result.json").exists()
    # What SLURM sends before a time limit or on preemption, to the job's task process;
    # submitit calls UnitJob.checkpoint and requeues the job (locally: the controller
    # starts the task again).
    (task,) = psutil.Process(int(sub.job.job_id)).children()
    task.send_signal(signal.SIGUSR2)
    wait_for(lambda: sub.job.done())

    assert sub.job.result() == "done"
    log = (scaleout.job_dir(grid, spec) / "job.log").read_text()
    assert "preempted or timed out: requeued" in log and "attempt 2 of" in log
    state = scaleout.read_state(scaleout.job_dir(grid, spec))
    assert (state["state"], state["attempts"]) == ("done", 2)
    assert_resumed(run_dir, at_signal, resume_reference)


def test_failed_job_is_recorded_and_only_it_is_resubmitted(tmp_path, capsys):
    grid = make_grid(tmp_path, methods=["Rand"], no_skip=False)
    options = scaleout.Options(executor="local", parallel=2, threads=1, notebooks=False)
    # A mask folder left half-written by hand: masks.pt without its per-layer table.
    broken = store.mask_dir(grid.root, grid.metric_masks(0.4)[0])
    broken.mkdir(parents=True)
    (broken / "masks.pt").write_bytes(b"not a mask")

    out = scaleout.run_grid(grid, options, progress=False)

    table = out.status.set_index("density")
    assert table.loc[0.1, "state"] == "done" and table.loc[0.4, "state"] == "failed"
    assert table.loc[0.4, "error"].startswith("FileNotFoundError: ") and "densities.csv" in table.loc[0.4, "error"]
    assert "Traceback" in open(table.loc[0.4, "log"]).read()
    assert out.figures is None and not scaleout.final_notebook(grid).exists()  # 04 waits for all jobs
    capsys.readouterr()
    assert cli.main(["status", "--profile", "smoke", "--set", *grid_args(grid)]) == 0
    assert "done 1, pending 0, running 0, requeued 0, missing 0, failed 1" in capsys.readouterr().out

    for path in broken.iterdir():
        path.unlink()
    again = scaleout.run_grid(grid, options, progress=False, figures=False)
    assert labels(again.submitted) == ["resnet34-synthetic-d0.4-s1"] and again.complete
    state = scaleout.read_state(scaleout.job_dir(grid, again.submitted[0]))
    assert (state["state"], state["attempts"], state["error"]) == ("done", 2, None)


# ------------------------------------------------------------------------------ slurm
@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``srun`` and ``sbatch`` stand-ins: sbatch keeps the script it is given and answers
    like SLURM does, so submitit's own code writes and "sends" the script."""
    bin_dir, sent = tmp_path / "bin", tmp_path / "sent"
    bin_dir.mkdir()
    sent.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{sent}/$(ls {sent} | wc -l).sh"\n'
                                    'echo "Submitted batch job 4242"\n')
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return sent


def test_slurm_sbatch_script_carries_the_options(tmp_path, fake_slurm, monkeypatch):
    grid = make_grid(tmp_path / "runs", seeds=[1, 2])  # 2 densities x 2 seeds: 4 jobs
    loads = []
    monkeypatch.setattr(scaleout, "_prefetch_data", lambda g: loads.append(sorted(fake_slurm.iterdir())))
    options = scaleout.Options(executor="slurm", partition="gpu-long", gpus_per_job=2, cpus_per_job=6,
                               timeout_min=600, parallel=3, mem_gb=32, sbatch={"account": "proj42", "mail-type": "END"},
                               setup=("module load cuda/12",))

    out = scaleout.run_grid(grid, options, progress=False, wait=False)

    assert loads == [[]]  # the data were read once, before anything was sent
    (script,) = [p.read_text() for p in fake_slurm.iterdir()]  # one sbatch call: one array
    lines = script.splitlines()
    for expected in ("#SBATCH --partition=gpu-long", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=6",
                     "#SBATCH --time=600", "#SBATCH --array=0-3%3", "#SBATCH --mem=32GB",
                     "#SBATCH --account=proj42", "#SBATCH --mail-type=END", "#SBATCH --signal=USR2@90",
                     "#SBATCH --job-name=pai-tiny-scale", "#SBATCH --ntasks-per-node=1", "module load cuda/12"):
        assert expected in lines, expected
    assert f"{sys.executable} -u -m submitit.core._submit" in script
    assert lines.index("module load cuda/12") < next(i for i, l in enumerate(lines) if "submitit.core._submit" in l)

    assert len(out.submitted) == 4 and (out.status["state"] == "pending").all()
    ids = sorted(json.loads((scaleout.job_dir(grid, s) / "submission.json").read_text())["job_id"] for s in out.submitted)
    assert ids == ["4242_0", "4242_1", "4242_2", "4242_3"]
    from submitit.slurm.slurm import SlurmJob

    job = SlurmJob(folder=scaleout.submitit_dir(grid), job_id="4242_0").submission().function
    assert isinstance(job, scaleout.UnitJob) and job.threads == 6 and job.cuda_devices is None
    # Queued jobs are not submitted twice (without sacct here, a queued job counts as alive).
    again = scaleout.run_grid(grid, options, progress=False, wait=False)
    assert again.submitted == [] and len(again.alive) == 4 and len(list(fake_slurm.iterdir())) == 1


def test_slurm_defaults(tmp_path, fake_slurm):
    ex = scaleout.make_executor(make_grid(tmp_path), scaleout.Options(executor="slurm"))
    assert {k: ex.parameters.get(k) for k in ("time", "gpus_per_node", "cpus_per_task", "array_parallelism",
                                              "partition")} == {
        "time": 24 * 60, "gpus_per_node": 1, "cpus_per_task": 8, "array_parallelism": 32, "partition": None}
    local = scaleout.make_executor(make_grid(tmp_path), scaleout.Options(executor="local"))
    assert local.parameters["timeout_min"] == 7 * 24 * 60  # not submitit's 2 minutes


# ------------------------------------------------------------------------------ small pieces
def test_cli_rejects_bad_executor_options(capsys):
    assert cli.main(["run", "--executor", "mpi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown executor 'mpi'; choose one of inprocess, local, slurm (--executor)"
    assert cli.main(["run", "--executor", "local", "--parallel", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --parallel must be >= 1, got 0"
    assert cli.main(["run", "--executor", "slurm", "--sbatch", "account"]) == 2
    assert capsys.readouterr().err.strip() == "error: --sbatch takes KEY=VALUE, got 'account'"


def test_threads_split_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert scaleout.Options(executor="local", parallel=4).job_threads == 4
    assert scaleout.Options(executor="local", parallel=32).job_threads == 1
    assert scaleout.Options(executor="slurm", cpus_per_job=6).job_threads == 6
    assert scaleout.Options(executor="local", parallel=4, threads=3).job_threads == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert scaleout._local_gpus(scaleout.Options(executor="local")) == ("2", "3")
    assert scaleout._local_gpus(scaleout.Options(executor="local", gpus=[5])) == ("5",)


def test_jobs_and_their_folders(tmp_path):
    grid = make_grid(tmp_path, archs=["resnet34", "vgg16"], seeds=[1, 2])
    specs = scaleout.jobs(grid)
    assert len(specs) == 2 * 2 * 2 and len({scaleout.job_dir(grid, s) for s in specs}) == 8
    resnet = scaleout.job_grid(grid, specs[0])
    assert resnet.archs == ("resnet34",) and resnet.seeds == (1,) and resnet.densities == (0.1,)
    assert [v for v in resnet.variants()] == [("resnet34", True), ("resnet34", False)]  # no-skip rides along
    # other settings, other job folder; other folder names, same job folder
    assert scaleout.job_dir(make_grid(tmp_path, epochs=2), specs[0]) != scaleout.job_dir(grid, specs[0])
    moved = make_grid(tmp_path / "elsewhere")
    assert scaleout.job_dir(moved, specs[0]).name == scaleout.job_dir(grid, specs[0]).name


def test_local_order_interleaves_architectures_costliest_first(tmp_path):
    grid = make_grid(tmp_path, archs=["resnet34", "vgg16"], densities=[0.4, 0.1])
    order = [(s.arch, s.density) for s in scaleout.local_order(scaleout.jobs(grid))]
    assert order == [("vgg16", 0.4), ("resnet34", 0.4), ("vgg16", 0.1), ("resnet34", 0.1)]
    # densities whose jobs also draw 05's full-size masks go first
    order = [(s.arch, s.density) for s in scaleout.local_order(scaleout.jobs(grid), first=[0.1])]
    assert order == [("vgg16", 0.1), ("resnet34", 0.1), ("vgg16", 0.4), ("resnet34", 0.4)]


def test_estimate_is_runs_times_epochs_times_images_over_throughput(tmp_path):
    grid = Grid.from_profile("paper")
    table = scaleout.estimate(grid, {"resnet34": 1000.0, "vgg16": 500.0})
    assert scaleout.images_per_epoch(grid) == 45_000 // 256 * 256  # 10% of 50000 held out
    resnet = table[table["arch"] == "resnet34"].iloc[0]
    assert resnet["training_runs"] == 10  # 5 methods x (with, without skips)
    assert resnet["hours"] == pytest.approx(10 * 250 * 44_800 / 1000 / 3600)
    assert len(table) == 2 * 5 * 3
    with pytest.raises(ValueError, match="no throughput for vgg16"):
        scaleout.estimate(grid, {"resnet34": 1.0})


def test_stop_children_stops_a_jobs_kernels():
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                               "time.sleep(60)"])
    try:
        child = wait_for(lambda: psutil.Process(parent.pid).children(), timeout_s=30)[0]
        assert scaleout._stop_children(parent.pid, grace_s=5) == [child.pid]
        assert wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, timeout_s=10)
    finally:
        parent.kill()
        parent.wait()


def test_two_kernels_side_by_side_keep_their_own_messages(tmp_path):
    # 04 and 05 run at once, each in its own IPC kernel: two kernels on one socket path read
    # each other's messages ("Invalid Signature") and hang. Each notebook must get its own
    # result, and each kernel's stderr its own log file.
    import threading

    import nbformat
    import papermill

    def run(k: int, out: dict) -> None:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"import os, time; time.sleep(1); os.write(2, b'fd 2 of kernel {k}'); x = {k} * 7; x")])
        src, dst = tmp_path / f"in{k}.ipynb", tmp_path / f"out{k}.ipynb"
        nbformat.write(nb, src)
        log = tmp_path / f"kernel{k}.log"
        papermill.execute_notebook(str(src), str(dst), kernel_name="python3", progress_bar=False,
                                   kernel_manager_class=scaleout._ipc_kernel_manager(log))
        out[k] = nbformat.read(dst, as_version=4).cells[0].outputs[0]["data"]["text/plain"]
        out[f"log{k}"] = log.read_text()

    results: dict = {}
    threads = [threading.Thread(target=run, args=(k, results), daemon=True) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert {k: results[k] for k in (1, 2)} == {1: "7", 2: "14"}
    # what a kernel writes to its own stderr goes to its log, not to the runner's terminal
    assert "fd 2 of kernel 1" in results["log1"] and "fd 2 of kernel 2" in results["log2"]


def test_a_shared_kernel_runs_notebooks_in_turn_each_from_an_empty_namespace(tmp_path):
    # A job's 01 -> 03 share one kernel (its start-up and imports paid once); each notebook
    # must still start from an empty namespace, as in a kernel of its own.
    import nbformat
    import papermill

    def notebook(name: str, source: str):
        src = tmp_path / f"{name}.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)]), src)
        return src

    first = notebook("first", "import os, sys; leftover = 1; sys.marker = 42; os.write(2, b'fd 2 of the first'); os.getpid()")
    second = notebook("second", "import os, sys; (os.getpid(), 'leftover' in globals(), getattr(sys, 'marker', None))")
    log = tmp_path / "kernel.log"
    with scaleout.SharedKernel(log, cwd=tmp_path) as kernel:
        outputs = []
        for src in (first, second):
            dst = src.with_name(f"out-{src.name}")
            papermill.execute_notebook(str(src), str(dst), kernel_name="python3", progress_bar=False,
                                       km=kernel.manager())
            outputs.append(nbformat.read(dst, as_version=4).cells[0].outputs[0]["data"]["text/plain"])
        pid = int(outputs[0])
        assert psutil.Process(pid).is_running()
    assert outputs[1] == f"({pid}, False, 42)"  # the same process, a fresh namespace, modules kept
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "fd 2 of the first" in log.read_text()
    with pytest.raises(RuntimeError, match="with block"):
        scaleout.SharedKernel().manager()
