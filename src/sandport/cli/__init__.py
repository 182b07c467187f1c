"""The ``sandport`` command: ``serve``, ``sandbox ...`` and ``image ...``.

Errors print one line on stderr and exit non-zero; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import SandportError
from . import image, sandbox, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandport", description="Self-hosted sandboxes with public URLs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(commands)
    sandbox.register(commands)
    image.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except SandportError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    return code
