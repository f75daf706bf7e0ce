"""Train RCSegNeXt: the same arguments as `rcsegnext train` (see `--help`).

Runs as
    python Training/train.py DATASET -o RUN --fold 0
    PythonSlicer Training/train.py DATASET -o RUN --fold 0
    Slicer --no-main-window --python-script Training/train.py DATASET -o RUN --fold 0
and exits with the command's status (0 done, 2 a user error, 1 otherwise). When RCSegNeXtCore is not installed
(inside the Slicer extension) it is imported from the folder above this script.
"""
from __future__ import annotations

import os
import sys


def _import_core():
    try:
        import RCSegNeXtCore  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _exit(code: int) -> None:
    """Inside Slicer, sys.exit alone leaves the application running: ask Slicer to quit with the code."""
    try:
        import slicer  # only present inside 3D Slicer
        slicer.util.exit(code)
    except ImportError:
        pass
    sys.exit(code)


def main(argv=None) -> int:
    _import_core()
    from RCSegNeXtCore.cli import main as cli_main
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:          # `Slicer --python-script train.py -- ARGS` style
        args = args[1:]
    try:
        return cli_main(["train", *args])
    except SystemExit as exc:       # argparse (--help, bad arguments)
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2
    except Exception as exc:        # an unexpected failure still ends Slicer with a non-zero code
        import traceback
        traceback.print_exc()
        print(f"train.py: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    _exit(main())
