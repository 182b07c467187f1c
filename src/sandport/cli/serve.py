"""``sandport serve``: run the server in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import SandportError
from ..settings import ServerSettings


def register(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "serve", help="run the sandport server",
        description="Run the sandport server. Every option also reads SANDPORT_<OPTION>.",
    )
    p.add_argument("--data-dir", help="where state lives (default /var/lib/sandport)")
    p.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8080)")
    p.add_argument("--images-dir", help="image store (default DATA_DIR/images)")
    p.add_argument("--public-url", help="URL clients use to reach this server's API")
    p.add_argument("--public-url-template", metavar="TEMPLATE",
                   help="sandbox port URLs, e.g. https://{port}-{id}.sandbox.example.com "
                        "(default http://{port}-{id}.localhost:PORT)")
    p.add_argument("--browser-url-ttl-s", type=int, metavar="N",
                   help="how long a browserUrl link can be opened (default 600)")
    p.add_argument("--token-ttl-s", type=int, metavar="N",
                   help="runtime tokens expire after N seconds; POST .../refresh gives a new "
                        "one (default 3600)")
    p.add_argument("--header-timeout-s", type=float, metavar="N",
                   help="a request head must arrive within N seconds (default 15)")
    p.add_argument("--idle-timeout-s", type=float, metavar="N",
                   help="idle kept-alive connections, and requests, responses and tunnels "
                        "with no bytes moving, close after N seconds (default 75)")
    p.add_argument("--config", help="TOML file with settings (flags and environment win)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    flags: dict[str, Any] = {
        "data_dir": args.data_dir, "listen": args.listen, "images_dir": args.images_dir,
        "public_url": args.public_url, "config": args.config, "log_level": args.log_level,
        "public_url_template": args.public_url_template,
        "browser_url_ttl_s": args.browser_url_ttl_s, "header_timeout_s": args.header_timeout_s,
        "idle_timeout_s": args.idle_timeout_s, "token_ttl_s": args.token_ttl_s,
    }
    settings = ServerSettings.load(flags)
    try:
        from ..server.serve import serve  # the server extra is only needed here
    except ImportError as exc:
        raise SandportError(
            f"the server needs the server extra ({exc.name} is missing): "
            "pip install 'sandport[server]'"
        ) from None

    serve(settings)
    return 0
