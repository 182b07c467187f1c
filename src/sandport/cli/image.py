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
from typing import Any, BinaryIO

from ..errors import ValidationFailed
from ..models import ImageInfo
from ..sdk import Images
from ._build_progress import BuildDisplay
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

    p = verbs.add_parser("build", help="build an image from a Dockerfile (or, without DIR, "
                         "a built-in image again), showing progress")
    p.add_argument("name", help="the name to give it, e.g. myapp or myapp:1; without DIR: "
                   "base, python or node")
    p.add_argument("context", nargs="?", metavar="DIR",
                   help="the build context: a directory with a Dockerfile (- reads a tar "
                   "of one from stdin)")
    p.add_argument("-f", "--file", metavar="DOCKERFILE",
                   help="the Dockerfile, a path inside DIR (default: DIR/Dockerfile)")
    p.add_argument("--build-arg", action="append", type=_build_arg, default=[],
                   metavar="K=V", help="set an ARG of the Dockerfile (repeatable)")
    p.add_argument("--network", choices=("none", "internet"),
                   help="what RUN steps may reach (default: none)")
    p.add_argument("--target", metavar="STAGE", help="build this stage, not the last")
    p.add_argument("--start-command", metavar="LINE",
                   help="what sandboxes made from the image start with")
    p.add_argument("--ready-command", metavar="LINE",
                   help="what tells that a sandbox made from the image is ready")
    p.add_argument("--vcpus", type=int, metavar="N", help="CPUs of each RUN step's sandbox")
    p.add_argument("--mem-mib", type=int, metavar="MIB",
                   help="memory of each RUN step's sandbox")
    _quiet(p)
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


def _build_arg(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def _dockerfile(context: str, given: str | None) -> str | None:
    """``-f`` as a path inside DIR: relative to DIR, or a path (absolute, or from here as
    docker reads it) that lies inside DIR. Anything else is refused: only DIR is sent."""
    if given is None:
        path = "Dockerfile"
    elif os.path.isabs(given) or (not os.path.exists(os.path.join(context, given))
                                  and os.path.exists(given)):
        # The directories resolved, not the file: a Dockerfile may be a symlink.
        where = os.path.realpath(os.path.dirname(os.path.abspath(given)))
        path = os.path.relpath(os.path.join(where, os.path.basename(given)),
                               os.path.realpath(context))
    else:
        path = os.path.normpath(given)
    if path == ".." or path.startswith(".." + os.sep) or os.path.isabs(path):
        raise ValidationFailed(f"the Dockerfile {given} is outside the build context "
                               f"{context}: only DIR is sent, so -f must name a file in it")
    if not os.path.isfile(os.path.join(context, path)):
        raise ValidationFailed(f"there is no Dockerfile at {os.path.join(context, path)}"
                               + ("" if given else " (name another one with -f)"))
    return None if given is None else path


def build(args: argparse.Namespace) -> int:
    build_args = dict(args.build_arg)
    context: str | BinaryIO | None = args.context
    dockerfile = args.file
    if args.context is None:
        if dockerfile is not None or build_args or any(
                v is not None for v in (args.network, args.target, args.start_command,
                                        args.ready_command, args.vcpus, args.mem_mib)):
            raise ValidationFailed("-f, --build-arg, --network, --target, --start-command, "
                                   "--ready-command, --vcpus and --mem-mib need a DIR to "
                                   "build from")
    elif args.context == "-":
        context = sys.stdin.buffer  # a tar of the context; -f is a path inside it
    elif not os.path.isdir(args.context):
        raise ValidationFailed(f"the build context {args.context} is not a directory")
    else:
        dockerfile = _dockerfile(args.context, args.file)
    display = BuildDisplay(sys.stderr, _live())
    upload = UploadDisplay(sys.stderr, _live(), "sending the build context")
    uploading = False

    def uploaded(sent: int, total: int | None) -> None:
        nonlocal uploading
        upload(sent, total)
        uploading = total is None or sent < total
        if not uploading:
            upload.finish("sent; building")

    def progress(event: dict[str, Any]) -> None:
        nonlocal uploading
        if uploading:  # a context of unknown size (stdin) ends when the build starts
            uploading = False
            upload.finish("sent; building")
        display(event)

    with _images(args) as images:
        try:
            image = images.build(
                args.name, context, dockerfile=dockerfile, build_args=build_args or None,
                network=args.network, target=args.target, start_command=args.start_command,
                ready_command=args.ready_command, vcpus=args.vcpus, mem_mib=args.mem_mib,
                on_progress=None if args.quiet else progress,
                on_upload=None if args.quiet else uploaded)
        finally:
            display.finish()
    if not args.quiet:
        print(_summary("built", image), file=sys.stderr)
    print(image.name)
    return 0


def inspect(args: argparse.Namespace) -> int:
    with _images(args) as images:
        image = images.get(args.name)
    print(json.dumps(image.to_wire(), indent=2))
    return 0
