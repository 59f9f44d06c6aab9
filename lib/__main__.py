"""``python -m lib``: the workbook's command line (:mod:`lib.cli`)."""
from .cli import main

raise SystemExit(main())
