"""The command line: user-fixable errors reach the terminal as one line naming the fix (and
the log or notebook with the details), from every executor."""
from urllib.error import URLError

import pytest

from lib import cli, scaleout
from lib.settings import Grid


@pytest.fixture
def no_download(monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def fail(*args, **kwargs):
        raise URLError("no network in this test")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fail)


@pytest.mark.parametrize("executor", ["inprocess", "local"])
def test_missing_cifar_is_one_line_from_every_executor(tmp_path, capsys, no_download, executor):
    code = cli.main(["run", "--profile", "paper", "--executor", executor,
                     "--set", f"data_dir={tmp_path / 'data'}", f"runs_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: CIFAR10 not found") and "put cifar-10-python.tar.gz in" in err


def test_a_failing_notebook_is_one_line_with_the_notebook_to_read(tmp_path, capsys, monkeypatch):
    grid = Grid(dataset="synthetic", runs_dir=str(tmp_path))
    output = tmp_path / "01.ipynb"
    with pytest.raises(scaleout.NotebookError) as info:
        scaleout.execute("01_pruning", grid, output, density=0.1, methods=["Magnitude"])
    assert info.value.message.startswith("ValueError: unknown pruning method 'Magnitude'; choose one of")
    assert info.value.notebook == output and "Traceback" not in info.value.message

    def fail(grid, progress=True):
        raise info.value

    monkeypatch.setattr(scaleout, "run_inprocess", fail)
    assert cli.main(["run", "--profile", "smoke"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {info.value.message} (details: {output})\n"


def test_bad_values_are_one_line(capsys):
    assert cli.main(["run", "--profile", "smoke", "--set", "densities=[0.1,2]"]) == 2
    assert capsys.readouterr().err.startswith("error: density must be in (0, 1]")
    assert cli.main(["status", "--profile", "smoke", "--set", "epoch=3"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown grid parameter(s) epoch;")
    assert cli.main(["estimate", "--profile", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_one_value_for_a_list_parameter_is_a_list_of_one(capsys):
    """``--set archs=resnet34`` (as the README's GPU recipe writes it) means ``[resnet34]``,
    not the characters of the name."""
    args = ["estimate", "--profile", "paper", "--throughput", "resnet34=1000"]
    assert cli.main(args + ["--set", "archs=resnet34", "densities=0.1"]) == 0
    one = capsys.readouterr().out
    assert cli.main(args + ["--set", "archs=[resnet34]", "densities=[0.1]"]) == 0
    assert capsys.readouterr().out == one
    assert "vgg16" not in one and "whole grid: 3 jobs, 30 training runs" in one  # one job per seed


def test_python_m_lib_workbook_still_works():
    import subprocess
    import sys

    from lib.files import REPO

    out = subprocess.run([sys.executable, "-m", "lib.workbook", "estimate", "--profile", "paper",
                          "--throughput", "resnet34=1000", "vgg16=500"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "whole grid: 30 jobs, 225 training runs" in out.stdout


def test_environment_is_restored_after_a_job_block(monkeypatch):
    import os

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with scaleout.environment(threads=2, cuda_devices="1"):
        assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "7" and "CUDA_VISIBLE_DEVICES" not in os.environ
