"""``sandport sandbox create|list|get|exec|expose|unexpose|snapshot|stop``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from ..models import SandboxInfo
from ..sdk import Sandbox
from ._client import add_client_options, client_settings


def register(commands: Any) -> None:
    group = commands.add_parser("sandbox", help="create, inspect and stop sandboxes")
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("create", help="create a sandbox and print its detail as JSON")
    p.add_argument("--image", default="python")
    p.add_argument("--timeout", type=int, dest="timeout_minutes", help="minutes (default 5)")
    p.add_argument("--vcpus", type=int)
    p.add_argument("--mem", type=int, dest="mem_mib", help="memory limit in MiB")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(run=create)

    p = verbs.add_parser("list", help="list sandboxes")
    p.add_argument("--status", choices=["active", "closed", "error"])
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(run=list_)

    p = verbs.add_parser("get", help="print a sandbox's detail as JSON")
    p.add_argument("id")
    p.set_defaults(run=get)

    p = verbs.add_parser("exec", help="run a command; exits with its exit code")
    p.add_argument("id")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="after --: one word is a shell line ('ls | wc -l'); several words "
                        "are a command and its arguments, each passed as it is")
    p.add_argument("--cwd")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    p.set_defaults(run=exec_)

    p = verbs.add_parser("expose", help="give a port a public URL and print it")
    p.add_argument("id")
    p.add_argument("port", type=int)
    p.add_argument("--auth", action="store_true",
                   help="require the sandbox's token (prints a one-time browser link too)")
    p.set_defaults(run=expose)

    p = verbs.add_parser("unexpose", help="close a port's public URL")
    p.add_argument("id")
    p.add_argument("port", type=int)
    p.set_defaults(run=unexpose)

    p = verbs.add_parser("snapshot", help="make an image of a sandbox's files as they are now")
    p.add_argument("id")
    p.add_argument("name", help="the image to make, e.g. myapp or myapp:v2")
    p.set_defaults(run=snapshot)

    p = verbs.add_parser("stop", help="stop a sandbox (stopping twice is fine)")
    p.add_argument("id")
    p.set_defaults(run=stop)

    for sub in verbs.choices.values():
        add_client_options(sub)


def _print_json(info: SandboxInfo) -> None:
    print(json.dumps(info.to_wire(), indent=2))


def _env_pairs(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --env takes KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def create(args: argparse.Namespace) -> int:
    s = client_settings(args)
    sb = Sandbox.create(args.image, timeout_minutes=args.timeout_minutes, vcpus=args.vcpus,
                        mem_mib=args.mem_mib, env=_env_pairs(args.env) or None,
                        api_key=s.api_key, base_url=s.base_url)
    sb.close()
    _print_json(sb.info)
    return 0


def list_(args: argparse.Namespace) -> int:
    s = client_settings(args)
    page = Sandbox.list(status=args.status, page=args.page, limit=args.limit,
                        api_key=s.api_key, base_url=s.base_url)
    print(f"{'ID':<22}{'STATUS':<8}{'IMAGE':<10}{'CREATED':<26}CLOSE REASON")
    for info in page.sandboxes:
        print(f"{info.id:<22}{info.status:<8}{info.image_name:<10}{info.created_at:<26}"
              f"{info.close_reason or ''}")
    print(f"({len(page.sandboxes)} of {page.total_count}, page {page.page})", file=sys.stderr)
    return 0


def get(args: argparse.Namespace) -> int:
    s = client_settings(args)
    sb = Sandbox.get(args.id, api_key=s.api_key, base_url=s.base_url)
    sb.close()
    _print_json(sb.info)
    return 0


def exec_(args: argparse.Namespace) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        raise SystemExit("error: give the command to run, e.g. sandport sandbox exec ID -- ls /")
    s = client_settings(args)
    sb = Sandbox.get(args.id, api_key=s.api_key, base_url=s.base_url)
    try:
        # Several words keep their boundaries (quoted), as a shell would have split them.
        line = words[0] if len(words) == 1 else shlex.join(words)
        result = sb.exec(line, cwd=args.cwd, timeout=args.timeout)
    finally:
        sb.close()
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.timed_out:
        print(f"error: timed out after {args.timeout:g}s", file=sys.stderr)
    return result.exit_code


def snapshot(args: argparse.Namespace) -> int:
    s = client_settings(args)
    sb = Sandbox.get(args.id, api_key=s.api_key, base_url=s.base_url)
    try:
        image = sb.snapshot(args.name)
    finally:
        sb.close()
    print(json.dumps(image.to_wire(), indent=2))
    return 0


def expose(args: argparse.Namespace) -> int:
    s = client_settings(args)
    sb = Sandbox.get(args.id, api_key=s.api_key, base_url=s.base_url)
    try:
        exposed = sb.expose(args.port, auth=args.auth)
    finally:
        sb.close()
    print(exposed.url)
    if exposed.auth and exposed.browser_url:
        print(f"browser link (once, until {exposed.browser_url_expires_at}): "
              f"{exposed.browser_url}", file=sys.stderr)
    return 0


def unexpose(args: argparse.Namespace) -> int:
    s = client_settings(args)
    sb = Sandbox.get(args.id, api_key=s.api_key, base_url=s.base_url)
    try:
        sb.unexpose(args.port)
    finally:
        sb.close()
    return 0


def stop(args: argparse.Namespace) -> int:
    s = client_settings(args)
    sb = Sandbox.get(args.id, api_key=s.api_key, base_url=s.base_url)
    try:
        info = sb.stop()
    finally:
        sb.close()
    print(f"{info.id} {info.status} ({info.close_reason})")
    return 0
