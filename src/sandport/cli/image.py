"""``sandport image list|pull|import|push|rm|build|inspect``.

Results go to stdout (a name, a table, JSON), progress to stderr: redrawn in place on a
terminal, one line per change of state when stderr is a file or a pipe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from ..models import ImageInfo
from ..sdk import Images
from ._client import add_client_options, client_settings
from ._progress import TransferDisplay, UploadDisplay, format_bytes, short_digest


def register(commands: Any) -> None:
    group = commands.add_parser("image", help="list, pull, import, push and remove images")
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("list", help="list images: built-in, pulled, imported")
    p.set_defaults(run=list_)

    p = verbs.add_parser("pull", help="pull an image from its registry, showing progress")
    p.add_argument("ref", help="e.g. node:22, ghcr.io/org/app:1, registry:5000/team/app@sha256:…")
    _quiet(p)
    p.set_defaults(run=pull)

    p = verbs.add_parser("import", help="import a `docker save` or OCI-layout tar archive")
    p.add_argument("name", help="the name to give it, e.g. myapp or myapp:1")
    p.add_argument("file", help="the archive (- reads it from stdin)")
    _quiet(p)
    p.set_defaults(run=import_)

    p = verbs.add_parser("push", help="push an image to a registry")
    p.add_argument("name")
    p.add_argument("ref", help="where to, e.g. registry.example.com:5000/team/app:1")
    _quiet(p)
    p.set_defaults(run=push)

    p = verbs.add_parser("rm", help="remove images (their layers stay while others use them)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(run=remove)

    p = verbs.add_parser("build", help="(re)build a built-in image, showing progress")
    p.add_argument("name", help="base, python or node")
    p.set_defaults(run=build)

    p = verbs.add_parser("inspect", help="print an image's detail as JSON")
    p.add_argument("name")
    p.set_defaults(run=inspect)

    for sub in verbs.choices.values():
        add_client_options(sub)


def _quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def _images(args: argparse.Namespace) -> Images:
    settings = client_settings(args)
    return Images(api_key=settings.api_key, base_url=settings.base_url)


def _live() -> bool:
    """Whether progress may be redrawn in place: stderr is a terminal that takes ANSI."""
    return sys.stderr.isatty() and os.environ.get("TERM", "") not in ("", "dumb")


def _when(stamp: str | None) -> str:
    if not stamp:
        return "-"
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp


def table(images: list[ImageInfo]) -> list[str]:
    """The rows of ``image list``; the name column is as wide as the longest name."""
    rows = [("NAME", "SOURCE", "SIZE", "LAYERS", "CREATED", "LAST USED")]
    for image in images:
        built = image.built or image.source != "builtin"
        rows.append((image.name, image.source or "-",
                     format_bytes(image.size_bytes) if image.size_bytes else "-",
                     str(image.layers) if image.layers else "-",
                     _when(image.created_at) if built else "not built",
                     _when(image.last_used_at)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  " + row[-1] for row in rows]


def list_(args: argparse.Namespace) -> int:
    with _images(args) as images:
        listed = images.list()
    print("\n".join(table(listed)))
    return 0


def _summary(verb: str, image: ImageInfo) -> str:
    details = [short_digest(image.digest)] if image.digest else []
    if image.layers:
        details.append(f"{image.layers} layers")
    if image.size_bytes:
        details.append(f"{format_bytes(image.size_bytes)} on disk")
    return f"{verb} {image.name}" + (f" ({', '.join(details)})" if details else "")


def pull(args: argparse.Namespace) -> int:
    display = TransferDisplay(sys.stderr, _live())
    with _images(args) as images:
        try:
            image = images.pull(args.ref, on_progress=None if args.quiet else display)
        finally:
            display.finish()
    if not args.quiet:
        print(_summary("pulled", image), file=sys.stderr)
    print(image.name)
    return 0


def push(args: argparse.Namespace) -> int:
    display = TransferDisplay(sys.stderr, _live())
    with _images(args) as images:
        try:
            pushed = images.push(args.name, args.ref, on_progress=None if args.quiet
                                 else display)
        finally:
            display.finish()
    print(f"{pushed.ref}@{pushed.digest}")
    return 0


def import_(args: argparse.Namespace) -> int:
    source = sys.stdin.buffer if args.file == "-" else args.file
    label = "uploading " + ("stdin" if args.file == "-" else os.path.basename(args.file))
    display = UploadDisplay(sys.stderr, _live(), label)

    def progress(sent: int, total: int | None) -> None:
        display(sent, total)
        if total is not None and sent == total:
            display.finish("sent; the server is unpacking the layers")

    with _images(args) as images:
        image = images.import_(args.name, source, on_progress=None if args.quiet
                               else progress)
    if not args.quiet:
        print(_summary("imported", image), file=sys.stderr)
    print(image.name)
    return 0


def remove(args: argparse.Namespace) -> int:
    with _images(args) as images:
        for name in args.names:
            images.delete(name)
            print(name)
    return 0


def build(args: argparse.Namespace) -> int:
    def progress(event: dict[str, Any]) -> None:
        if "progress" in event:
            print(event["progress"], file=sys.stderr, flush=True)

    with _images(args) as images:
        image = images.build(args.name, on_progress=progress)
    print(f"image {image.name} built ({image.created_at})")
    return 0


def inspect(args: argparse.Namespace) -> int:
    with _images(args) as images:
        image = images.get(args.name)
    print(json.dumps(image.to_wire(), indent=2))
    return 0
