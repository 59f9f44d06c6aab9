"""lib.train on CPU with a tiny pruned network: resume, finished runs, divergence, masks."""
from __future__ import annotations

import json
import shutil
import time

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lib import train as T
from lib.data import load_data
from lib.pruning import empty_layers
from lib.settings import TrainSettings

SETTINGS = TrainSettings(epochs=4, batch_size=64, lr=0.05, milestones=(2, 3))


class Tiny(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.2)  # exercises the torch RNG across a resume
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.mean((2, 3))))


def pruned_tiny(density=0.5, empty=()):
    """A fixed initialisation with fixed random masks (``empty`` layers keep nothing)."""
    torch.manual_seed(0)
    model = Tiny()
    g = torch.Generator().manual_seed(1)
    for name in ("conv1", "conv2", "fc"):
        module = getattr(model, name)
        mask = torch.rand(module.weight.shape, generator=g) < density
        if name in empty:
            mask[:] = False
        prune.custom_from_mask(module, "weight", mask)
    return model


@pytest.fixture(scope="module")
def splits():
    return load_data("synthetic", synthetic_size=(384, 3, 32, 32))  # 346 train -> 5 steps


@pytest.fixture(scope="module")
def full_run(splits, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    result = T.train(pruned_tiny(), splits, SETTINGS, run_dir, seed=1, progress=False)
    return run_dir, result


def history(run_dir):
    return pd.read_csv(run_dir / "history.csv").drop(columns="epoch_seconds")


def test_history_and_result(full_run):
    run_dir, result = full_run
    h = pd.read_csv(run_dir / "history.csv")
    assert list(h.columns) == T.HISTORY_COLUMNS
    assert h["epoch"].tolist() == [1, 2, 3, 4]
    assert h["lr"].tolist() == pytest.approx([0.05, 0.05, 0.005, 0.0005])
    assert h[["train_acc", "val_acc", "test_acc"]].stack().between(0, 1).all()
    assert (h["epoch_seconds"] > 0).all()
    best = h["val_acc"].idxmax()  # first maximum
    assert result["status"] == "done" and result["epochs_run"] == 4
    assert result["best_epoch"] == h["epoch"][best]
    assert result["test_acc"] == pytest.approx(h["test_acc"][best])
    assert result["val_acc"] == pytest.approx(h["val_acc"][best])
    assert result["diverged_epoch"] is None and result["empty_layers"] == []
    assert json.loads((run_dir / "result.json").read_text())["test_acc"] == result["test_acc"]
    assert not (run_dir / "checkpoint.pt").exists()  # removed once finished
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]  # it learns something


def test_resume_gives_the_same_history(splits, full_run, tmp_path, monkeypatch):
    full_dir, _ = full_run
    # (a) stopped cleanly after epoch 2, then resumed with a freshly built model.
    part = T.train(pruned_tiny(), splits, SETTINGS, tmp_path / "a", seed=1, progress=False,
                   stop_after=2)
    assert part["status"] == "stopped" and part["epochs_run"] == 2
    assert not (tmp_path / "a" / "result.json").exists()
    # A kill: only the checkpoint of epoch 2 survives, in a fresh folder.
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "checkpoint.pt")
    step = T.train_step
    calls = {"n": 0}

    def counting_step(*args, **kwargs):
        calls["n"] += 1
        return step(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", counting_step)
    for d in "ab":
        calls["n"] = 0
        T.train(pruned_tiny(), splits, SETTINGS, tmp_path / d, seed=1, progress=False)
        assert calls["n"] == 2 * 5  # only epochs 3 and 4 were trained
    monkeypatch.setattr(T, "train_step", step)
    pd.testing.assert_frame_equal(history(tmp_path / "a"), history(full_dir), check_exact=True)
    pd.testing.assert_frame_equal(history(tmp_path / "b"), history(full_dir), check_exact=True)

    # (c) killed in the middle of epoch 3 (the model in memory is then half-trained).
    calls["n"] = 0

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:  # 5 steps per epoch: step 3 of epoch 3
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        T.train(pruned_tiny(), splits, SETTINGS, tmp_path / "c", seed=1, progress=False)
    monkeypatch.setattr(T, "train_step", step)
    assert len(pd.read_csv(tmp_path / "c" / "history.csv")) == 2
    monkeypatch.setattr(T, "train_step", counting_step)
    calls["n"] = 0
    T.train(pruned_tiny(), splits, SETTINGS, tmp_path / "c", seed=1, progress=False)
    assert calls["n"] == 2 * 5
    pd.testing.assert_frame_equal(history(tmp_path / "c"), history(full_dir), check_exact=True)


def test_validation_with_the_training_augmentation_resumes_exactly(splits, tmp_path):
    import dataclasses

    settings = dataclasses.replace(SETTINGS, val_augment=True)
    whole = T.train(pruned_tiny(), splits, settings, tmp_path / "whole", seed=1, progress=False)
    T.train(pruned_tiny(), splits, settings, tmp_path / "part", seed=1, progress=False, stop_after=2)
    T.train(pruned_tiny(), splits, settings, tmp_path / "part", seed=1, progress=False)
    pd.testing.assert_frame_equal(history(tmp_path / "part"), history(tmp_path / "whole"), check_exact=True)
    plain = T.train(pruned_tiny(), splits, SETTINGS, tmp_path / "plain", seed=1, progress=False)
    # same training, but the validation images are crops and flips: other accuracies
    assert history(tmp_path / "whole")["train_loss"].equals(history(tmp_path / "plain")["train_loss"])
    assert not history(tmp_path / "whole")["val_acc"].equals(history(tmp_path / "plain")["val_acc"])
    assert whole["status"] == plain["status"] == "done"


def test_finished_run_is_not_retrained(splits, full_run):
    run_dir, result = full_run
    before = (run_dir / "history.csv").stat().st_mtime_ns
    model = pruned_tiny()
    weights = model.conv1.weight_orig.clone()
    start = time.perf_counter()
    again = T.train(model, splits, SETTINGS, run_dir, seed=1, progress=False)
    assert time.perf_counter() - start < 1.0
    assert again == result
    assert (run_dir / "history.csv").stat().st_mtime_ns == before
    assert torch.equal(model.conv1.weight_orig, weights)


def test_divergence_is_reported_not_raised(splits, tmp_path):
    settings = TrainSettings(epochs=3, batch_size=64, lr=1e10, milestones=(2,))
    result = T.train(pruned_tiny(), splits, settings, tmp_path, seed=0, progress=False)
    assert result["status"] == "diverged"
    assert result["diverged_epoch"] == result["epochs_run"] and 1 <= result["diverged_epoch"] <= 3
    on_disk = json.loads((tmp_path / "result.json").read_text())  # valid JSON, no NaN
    assert on_disk["status"] == "diverged" and on_disk["diverged_epoch"] == result["diverged_epoch"]
    h = pd.read_csv(tmp_path / "history.csv")
    assert len(h) == result["epochs_run"] and h["val_acc"].isna().iloc[-1]
    # A diverged run is finished: calling again returns the same result.
    assert T.train(pruned_tiny(), splits, settings, tmp_path, seed=0, progress=False) == on_disk


def test_nan_model_diverges_in_epoch_one(splits, tmp_path):
    model = pruned_tiny()
    model.fc.register_forward_hook(lambda m, i, out: out * float("nan"))
    result = T.train(model, splits, SETTINGS, tmp_path, seed=0, progress=False)
    assert (result["status"], result["diverged_epoch"], result["best_epoch"]) == ("diverged", 1, None)


def test_empty_layer_trains_and_is_reported(splits, tmp_path):
    model = pruned_tiny(empty=("conv2",))
    result = T.train(model, splits, SETTINGS, tmp_path, seed=0, progress=False)
    assert result["status"] == "done" and result["empty_layers"] == ["conv2"]
    assert empty_layers(T.applied_masks(model)) == ["conv2"]
    assert not model.conv2.weight.any()


def test_masked_weights_stay_exactly_zero(splits, tmp_path):
    model = pruned_tiny(density=0.3)
    masks = {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    orig = model.conv1.weight_orig.detach().clone()
    T.train(model, splits, SETTINGS, tmp_path, seed=0, progress=False)
    assert not torch.equal(model.conv1.weight_orig, orig)  # it did train
    model.eval()
    with torch.no_grad():
        model(splits.test.images[:2].float())  # the pre-hook recomputes weight
    for name, mask in masks.items():
        module = model.get_submodule(name)
        assert torch.equal(module.weight_mask, mask)  # masks held fixed
        for w in (module.weight, module.weight_orig * module.weight_mask):
            assert (w[mask == 0] == 0).all()
        assert (module.weight[mask == 1] != 0).any()
    assert result_density(tmp_path) == pytest.approx(
        sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()))


def result_density(run_dir):
    return json.loads((run_dir / "result.json").read_text())["mask_density"]


def test_splits_must_match_settings(splits, tmp_path):
    with pytest.raises(ValueError, match="train_fraction"):
        T.train(pruned_tiny(), splits, TrainSettings(epochs=1, batch_size=64, train_fraction=0.5),
                tmp_path, progress=False)


def test_progress_bar_runs(splits, tmp_path, capsys):
    settings = TrainSettings(epochs=1, batch_size=64)
    result = T.train(pruned_tiny(), splits, settings, tmp_path, seed=0, progress=True)
    assert result["status"] == "done"
    assert "train" in capsys.readouterr().err
