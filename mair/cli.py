"""The ``mair`` command: ``mair data|weights|train|evaluate|restore|tables|bench|info``.

Each command group lives beside the code it drives and exposes ``register(subparsers)``; this module only
collects them. Registration must stay cheap (no torch import) so that ``mair --help`` is instant; handlers
import what they need.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mair import __version__
from mair.common.errors import CommandError
from mair.runtime.switches import SwitchError

# Modules that each provide ``register(subparsers: argparse._SubParsersAction) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "mair.models.cli",
    "mair.bench.cli",
    "mair.data.cli",
    "mair.report.cli",
    "mair.evaluate.cli",
    "mair.train.cli",
    "mair.weights.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mair", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mair {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except (CommandError, SwitchError) as error:
        print(f"mair {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mair {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
