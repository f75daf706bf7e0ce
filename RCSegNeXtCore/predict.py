"""`python -m RCSegNeXtCore.predict ARGS` = `rcsegnext predict ARGS` (runs under Slicer's PythonSlicer, no pip)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from RCSegNeXtCore.cli import main as cli_main
    return cli_main(["predict", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
