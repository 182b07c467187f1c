"""Options shared by the client commands (server address and key)."""

from __future__ import annotations

import argparse

from ..settings import ClientSettings


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="server URL (default: $SANDPORT_BASE_URL or "
                        "http://127.0.0.1:8080)")
    parser.add_argument("--api-key", help="API key (default: $SANDPORT_API_KEY)")


def client_settings(args: argparse.Namespace) -> ClientSettings:
    return ClientSettings.load(args.base_url, args.api_key)
