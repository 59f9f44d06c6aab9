"""One declaration of the grid: the notebooks' parameters cells and the profiles are literal
copies of lib.settings.Grid; run-folder hashes are pinned; lib/ has no import cycle."""
import ast
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from lib import scaleout
from lib.files import NOTEBOOKS, PROFILES, REPO
from lib.seeds import stream_seed
from lib.settings import (
    MASK_KEYS,
    RECIPE_CONSTANTS,
    SCHEMA_VERSION,
    Grid,
    PruneSettings,
    TrainRun,
    TrainSettings,
    grid_fields,
    settings_hash,
)


def _cell(notebook: str) -> dict:
    nb = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())
    return next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))


def test_every_grid_field_has_help_and_the_defaults_are_the_smoke_profile():
    assert all(f.metadata.get("help") for f in grid_fields().values())
    assert Grid() == Grid.from_profile("smoke")


def test_parameters_cells_are_generated_from_the_grid():
    for notebook in scaleout.NOTEBOOK_ORDER:
        assert "".join(_cell(notebook)["source"]) == scaleout.parameters_cell(notebook), (
            f"{notebook}: run `python -m lib notebooks --write`")
    assert scaleout.stale_parameter_cells() == []


def test_parameters_cells_are_typed_literals_papermill_reads():
    import papermill

    for notebook in scaleout.NOTEBOOK_ORDER:
        namespace = {}
        exec("".join(_cell(notebook)["source"]), namespace)
        declared = papermill.inspect_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"))
        assert set(declared) == {k for k in namespace if not k.startswith("__")}
        grid = Grid.from_parameters(namespace)
        assert grid == Grid(**{**Grid().values(), "densities": grid.densities})
        assert all(p["help"] for p in declared.values()), "--help-notebook shows a comment per parameter"


def test_notebooks_are_committed_clean():
    for notebook in scaleout.NOTEBOOK_ORDER:
        nb = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{notebook} has outputs"


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.yaml")), ids=lambda p: p.stem)
def test_profiles_set_every_grid_parameter(path):
    values = yaml.safe_load(path.read_text())
    assert list(values) == list(grid_fields()), "a profile lists every parameter, in the Grid's order"
    assert Grid.from_profile(path.stem).profile == path.stem


def test_bad_profile_values_name_the_fix():
    with pytest.raises(ValueError, match="unknown grid parameter.s. epoch; the parameters are"):
        Grid.from_profile("smoke", epoch=3)
    with pytest.raises(ValueError, match="unknown pruning method 'Random'; choose one of Rand, ERK"):
        Grid(methods=["Random"])
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        Grid(dataset="cifar")
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        Grid(reference_densities=[0.1, 10])
    with pytest.raises(ValueError, match="unknown synflow_readout 'mean'; choose one of sum, log_softmax"):
        Grid(synflow_readout="mean")


def test_unit_settings_take_their_options_from_the_grid_by_name():
    grid = Grid(rounds=7, scoring_batches=3, epochs=4, lr=0.05, milestones=[2, 3])
    (mask, *_) = grid.metric_masks(0.1)
    assert (mask.rounds, mask.scoring_batches) == (7, 3)
    assert grid.train_settings() == TrainSettings(epochs=4, batch_size=128, lr=0.05, milestones=(2, 3),
                                                  train_fraction=0.02, val_fraction=0.1, test_fraction=0.1,
                                                  val_split="last", val_augment=True)
    # Every option of a unit is a grid parameter, or a constant of the paper's recipe.
    options = {f.name for f in dataclasses.fields(PruneSettings)} - set(MASK_KEYS)
    recipe = {f.name for f in dataclasses.fields(TrainSettings)} - set(RECIPE_CONSTANTS)
    assert options | recipe <= set(grid_fields())


def test_run_folder_hash_is_pinned():
    # If this fails, every existing run folder would be re-labelled: bump SCHEMA_VERSION on
    # purpose (and update the pinned values) only when a setting's meaning changes.
    prune = PruneSettings(arch="resnet34", dataset="cifar10", method="SNIP", density=0.05, seed=1)
    assert SCHEMA_VERSION == 6
    assert settings_hash(prune) == "645c41fda37f"
    assert settings_hash(TrainRun(prune=prune, train=TrainSettings())) == "244b52fa9c74"


def test_hash_covers_every_field_including_defaults():
    base = PruneSettings(arch="vgg16", dataset="cifar10", method="Rand", density=0.1, seed=1)
    changed = [
        dataclasses.replace(base, rounds=99),
        dataclasses.replace(base, seed=2),
        dataclasses.replace(base, width=0.5),
    ]
    assert len({settings_hash(s) for s in [base, *changed]}) == 4
    assert settings_hash(TrainRun(base, TrainSettings(epochs=10))) != settings_hash(TrainRun(base))


def test_stream_seeds_are_stable_distinct_and_valid_torch_seeds():
    streams = ["init", "split", "scoring", "Rand", "ERK", "shuffle", "dropout"]
    seeds = [stream_seed(s, name) for s in (1, 2) for name in streams]
    assert len(set(seeds)) == len(seeds) and all(0 <= x < 2**63 for x in seeds)
    assert stream_seed(1, "init") == 9026945870587435849  # pinned: init weights depend on it


def _lib_imports(path: Path) -> set[str]:
    """Every lib module that ``path`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                out |= {node.module} if node.module else {a.name for a in node.names}
            elif node.module and node.module.startswith("lib."):
                out.add(node.module.split(".")[1])
            elif node.module == "lib":
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lib.")}
    return {m.split(".")[0] for m in out} - {"__main__"}


def test_lib_has_no_import_cycle():
    modules = {p.stem: _lib_imports(p) for p in (REPO / "lib").glob("*.py") if p.stem != "__main__"}
    modules = {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for d in sorted(modules[m]):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(modules):
        visit(m)
