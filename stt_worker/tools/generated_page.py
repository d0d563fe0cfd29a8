"""The command line of a generated docs page: print it, or `--write` it (docs/ by default)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def print_or_write(
    render: Callable[[], str], default_path: Path, argv: Sequence[str] | None, *, prog: str
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=f"Render {default_path.name}.")
    parser.add_argument(
        "--write",
        nargs="?",
        const=default_path,
        type=Path,
        metavar="PATH",
        help=f"write the page (to {default_path.parent.name}/{default_path.name} by default) "
        "instead of printing it",
    )
    args = parser.parse_args(argv)
    page = render()
    if args.write is None:
        sys.stdout.write(page)
        return 0
    args.write.write_text(page, encoding="utf-8")
    sys.stderr.write(f"wrote {args.write}\n")
    return 0
