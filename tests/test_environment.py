"""The environment files agree: environment.yml lists exactly the pinned requirements."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _requirements():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def test_environment_yml_lists_the_pinned_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(p for p in pip if not p.startswith("-e")) == _requirements()
    assert "torch==2.14.1" in _requirements() and "torchvision==0.29.1" in _requirements()
    assert all("==" in r for r in _requirements()), "every requirement is pinned"
