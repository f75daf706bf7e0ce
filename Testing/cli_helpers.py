"""Helpers for tests of a sub-command's options: its parser, and which options a command line left at default."""
from __future__ import annotations

import argparse
from typing import Iterable, List


def command_parser(command) -> argparse.ArgumentParser:
    """The argument parser of `RCSegNeXtCore.commands.<command>` on its own."""
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser


def options_left_at_default(parser: argparse.ArgumentParser, args: argparse.Namespace,
                            ignore: Iterable[str] = ()) -> List[str]:
    """The option strings whose value in `args` is still the default (a test listing every option must set all)."""
    skip = {"help", *ignore}
    return [a.option_strings[0] for a in parser._actions if a.dest not in skip and getattr(args, a.dest) == a.default]
