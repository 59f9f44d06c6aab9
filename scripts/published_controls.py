"""Measure density-matched controls of every mask of the published record into data/published/.

    .venv/bin/python scripts/published_controls.py              # 1 draw per mask
    .venv/bin/python scripts/published_controls.py --draws 2

A control of a mask keeps, in every layer, exactly as many weights as the authors' mask did
(their released layer densities times the layer's size), at random; its graph metrics come from
the workbook's checker (lib.controls, lib.spectral). The table is derived by this workbook, not
released by the authors; 04_figures reads it to ask whether a metric ranks methods beyond the
layer-wise density. The output is byte-identical for the same draws (seeded per mask).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's lib, not an installed copy

from lib import controls, published  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1, help="control masks per published mask (default %(default)s)")
    ap.add_argument("--out", default=str(published.FOLDER), help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    table = controls.controls_table(published.tables()["layers"], draws=args.draws)
    path = published.write_controls(table, args.out)
    print(f"{len(table)} control layers of {table.groupby(['dataset', 'arch', 'method', 'density', 'seed']).ngroups} "
          f"masks, {args.draws} draw(s) each, in {time.perf_counter() - start:.0f} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
