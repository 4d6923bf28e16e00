"""`lsfn`: the command line. `serve` arrives with the HTTP runtime; deploy commands live in deploy/."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lsfn` console script."""
    parser = argparse.ArgumentParser(prog="lsfn", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(version("lsfn"))
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
