"""Write the condensed record of the authors' released results into data/published/.

    .venv/bin/python scripts/convert_published.py --source /work/shared/ramanujan-on-pai-release
    .venv/bin/python scripts/convert_published.py --source ~/src/ramanujan-on-pai --out /tmp/published

``--source``: a checkout of github.com/VITA-Group/ramanujan-on-pai (commit ec1d583) or a copy of
its result files in the same layout. The work is :func:`lib.published.convert`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's lib, not an installed copy

from lib import published  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="the authors' release (repository checkout or copy)")
    ap.add_argument("--out", default=str(published.FOLDER), help="output folder (default: %(default)s)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        written = published.convert(args.source, args.out, progress=not args.no_progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name:10s} {path.stat().st_size:>9,d} bytes  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
