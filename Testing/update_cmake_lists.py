"""Keep the Slicer extension's CMake file lists in step with the Python files on disk.

Every `.py` (and non-Python resource) of `RCSegNeXtCore/` must be listed in the top-level CMakeLists.txt and every
file of the module in `RCSegNeXt/CMakeLists.txt`, or the installed extension lacks it. The lists sit between
`# BEGIN generated` / `# END generated` markers; this script rewrites them.

    python Testing/update_cmake_lists.py           # rewrite both lists from the files on disk
    python Testing/update_cmake_lists.py --check   # exit 1 (naming the differences) when a list is stale
    python Testing/update_cmake_lists.py --print   # print the lists
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
SKIP_PARTS = {"__pycache__", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def _files(root: Path, base: Path) -> List[Path]:
    return sorted(p.relative_to(base) for p in root.rglob("*")
                  if p.is_file() and not (set(p.relative_to(base).parts) & SKIP_PARTS)
                  and p.suffix not in SKIP_SUFFIXES and not p.name.startswith("."))


def expected_lists(repo: Path = REPO) -> Dict[str, Dict[str, List[str]]]:
    """{CMakeLists path: {CMake variable: [file, ...]}} as they should be (paths relative to that CMakeLists)."""
    core = _files(repo / "RCSegNeXtCore", repo)
    module_dir = repo / "RCSegNeXt"
    module = [p for p in _files(module_dir, module_dir) if p.name != "CMakeLists.txt"]
    return {
        "CMakeLists.txt": {
            "RCSEGNEXTCORE_PYTHON_SCRIPTS": [p.as_posix() for p in core if p.suffix == ".py"],
            "RCSEGNEXTCORE_PYTHON_RESOURCES": [p.as_posix() for p in core if p.suffix != ".py"],
        },
        "RCSegNeXt/CMakeLists.txt": {
            "MODULE_PYTHON_SCRIPTS": [p.as_posix() for p in module if p.suffix == ".py"],
            "MODULE_PYTHON_RESOURCES": [p.as_posix() for p in module if p.suffix != ".py"],
        },
    }


def render(variables: Dict[str, List[str]]) -> str:
    blocks = []
    for name, files in variables.items():
        blocks.append(f"set({name}\n" + "".join(f"  {f}\n" for f in files) + "  )")
    return "\n".join(blocks) + "\n"


BLOCK = re.compile(r"(# BEGIN generated[^\n]*\n)(.*?)(# END generated)", re.S)


def listed(cmake_text: str) -> Dict[str, List[str]]:
    """The file lists of every set(NAME ...) in a CMakeLists text (for the consistency test)."""
    found = {}
    for match in re.finditer(r"set\((\w+)\s*\n(.*?)\)", cmake_text, re.S):
        items = [line.strip() for line in match.group(2).splitlines()]
        found[match.group(1)] = [i for i in items if i and not i.startswith("#")]
    return found


def update(repo: Path = REPO, check: bool = False) -> List[str]:
    """Rewrite (or, with check, only compare) the generated blocks; returns what was stale."""
    stale = []
    for rel, variables in expected_lists(repo).items():
        path = repo / rel
        text = path.read_text(encoding="utf-8")
        match = BLOCK.search(text)
        if match is None:
            raise SystemExit(f"{path}: no '# BEGIN generated' ... '# END generated' block")
        if match.group(2) != render(variables):
            have = listed(match.group(2))
            for name, files in variables.items():
                missing = sorted(set(files) - set(have.get(name, [])))
                extra = sorted(set(have.get(name, [])) - set(files))
                if missing or extra:
                    stale.append(f"{rel} {name}: missing {missing}, no longer on disk {extra}")
            stale = stale or [f"{rel}: order or layout differs"]
            if not check:
                path.write_text(text[:match.start(2)] + render(variables) + text[match.end(2):], encoding="utf-8")
    return stale


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale lists (exit 1)")
    parser.add_argument("--print", action="store_true", help="print the lists")
    args = parser.parse_args(argv)
    if args.print:
        for rel, variables in expected_lists().items():
            print(f"# {rel}\n{render(variables)}")
        return 0
    stale = update(check=args.check)
    for line in stale:
        print(("stale: " if args.check else "updated: ") + line)
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
