"""`rcsegnext` console command: a thin dispatcher over RCSegNeXtCore.commands.<name> modules.

Each command module defines HELP (one line), add_arguments(parser) and run(args) -> int exit code, and imports
heavy dependencies inside run() so `rcsegnext --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from RCSegNeXtCore import __version__
from RCSegNeXtCore.errors import RCSegNeXtError

# sub-command -> module under RCSegNeXtCore.commands (order = order in --help)
COMMANDS = {
    "demo": "demo",
    "summary": "summary",
    "phantom": "phantom",
    "check": "check",
    "plan": "plan",
    "preprocess": "preprocess",
    "train": "train",
    "init-model": "init_model",
    "import-official": "import_official",
    "import-nnunet": "import_nnunet",
    "export-onnx": "export_onnx",
    "predict": "predict",
    "evaluate": "evaluate",
    "report": "report",
    "compare": "compare",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcsegnext", description="RCSegNeXt: rectum and rectal tumour "
                                     "segmentation in sagittal T2 MRI (plan, preprocess, train, predict, evaluate).")
    parser.add_argument("--version", action="version", version=f"rcsegnext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"RCSegNeXtCore.commands.{module_name}")
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except RCSegNeXtError as exc:
        print(f"rcsegnext {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        # inference runs on an engine without PyTorch; training, exporting and torch-backend runs need it
        print(f"rcsegnext {args.command}: error: this needs PyTorch, which is not installed: pip install torch "
              "(in 3D Slicer: the PyTorch Utils module). Segmenting on the CPU does not need it "
              "(predict --backend auto)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rcsegnext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
