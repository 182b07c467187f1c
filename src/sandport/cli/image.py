"""``sandport image list|build``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx

from ..errors import SandportError, TransportError, error_from_wire
from ..sdk import _base
from ..sdk._sync import _send
from ._client import add_client_options, client_settings


def register(commands: Any) -> None:
    group = commands.add_parser("image", help="list and build images")
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("list", help="list images and whether they are built")
    p.set_defaults(run=list_)
    p = verbs.add_parser("build", help="(re)build a built-in image, showing progress")
    p.add_argument("name", help="base, python or node")
    p.set_defaults(run=build)
    for sub in verbs.choices.values():
        add_client_options(sub)


def list_(args: argparse.Namespace) -> int:
    with httpx.Client() as client:
        images = _send(client, _base.list_images_call(client_settings(args)))
    print(f"{'IMAGE':<10}{'BUILT':<7}{'SIZE':>10}  CREATED")
    for image in images:
        size = f"{image.size_bytes / 2**20:.0f} MiB" if image.size_bytes else "-"
        print(f"{image.name:<10}{'yes' if image.built else 'no':<7}{size:>10}  "
              f"{image.created_at or '-'}")
    return 0


def build(args: argparse.Namespace) -> int:
    url, headers = _base.build_image_request(client_settings(args), args.name)
    try:
        with httpx.stream("POST", url, headers=headers, timeout=httpx.Timeout(30, read=900)) as r:
            if r.status_code >= 400:
                r.read()
                raise _error(r)
            for line in r.iter_lines():
                if not line.strip():
                    continue
                progress, image = _base.parse_build_line(line)
                if progress is not None:
                    print(progress, file=sys.stderr, flush=True)
                elif image is not None:
                    print(f"image {image.name} built ({image.created_at})")
    except httpx.HTTPError as exc:
        raise TransportError(f"cannot reach sandport at {url}: {exc}") from None
    return 0


def _error(response: httpx.Response) -> SandportError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_from_wire(response.status_code, body)
