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
    p.add_argument("--tls-cert", metavar="FILE",
                   help="serve HTTPS with this certificate chain (PEM; a wildcard for the "
                        "sandbox hosts' domain, e.g. *.sandbox.example.com); SIGHUP reloads "
                        "it and --tls-key")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
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
    p.add_argument("--retain-ended-h", type=float, metavar="H",
                   help="a sandbox that ended without a stop request (a crash, a host "
                        "reboot) keeps its files H hours (default 24)")
    p.add_argument("--max-connections-per-address", type=int, metavar="N",
                   help="open connections one client address may hold (default 512)")
    p.add_argument("--trusted-proxy", action="append", metavar="CIDR",
                   help="a proxy in front whose PROXY protocol header or X-Forwarded-For "
                        "names the client (repeatable; default none)")
    p.add_argument("--min-body-rate", type=int, metavar="BYTES_PER_S",
                   help="a request body averaging less over any window is cut with 408 "
                        "(default 256; window: --min-body-rate-window-s, default 60)")
    p.add_argument("--min-body-rate-window-s", type=float, metavar="N")
    p.add_argument("--max-pids-total", type=int, metavar="N",
                   help="processes and threads of all sandboxes together, enforced on their "
                        "parent cgroup (default 3/4 of the host's pid_max)")
    p.add_argument("--memory-overcommit", type=float, metavar="X",
                   help="memMiB of running and paused sandboxes may add up to "
                        "(MemTotal - reserve) x X (default 1.5)")
    p.add_argument("--memory-reserve-mib", type=int, metavar="MIB",
                   help="memory kept for the host (default MemTotal/10, at least 1024)")
    p.add_argument("--buffer-memory-mib", type=int, metavar="MIB",
                   help="process output the server keeps, all sandboxes together "
                        "(default MemTotal/8, at most 512)")
    p.add_argument("--registry-auth", metavar="FILE",
                   help="Docker-format auth file (default DATA_DIR/registry-auth.json)")
    p.add_argument("--registry-ca", action="append", metavar="HOST=FILE",
                   help="trust FILE's CA for registry HOST[:PORT] (repeatable)")
    p.add_argument("--insecure-registry", action="append", metavar="HOST:PORT",
                   help="speak plain HTTP to this registry (repeatable)")
    p.add_argument("--registry-mirror", action="append", metavar="HOST=URL",
                   help="reach registry HOST (e.g. docker.io) only through URL (repeatable)")
    p.add_argument("--registry-allow", action="append", metavar="HOST",
                   help="only these registries (HOST[:PORT] or *.domain) may be named "
                        "(repeatable; default: any on an internet address)")
    p.add_argument("--images-max-gib", type=float, metavar="N",
                   help="reclaim least recently used images beyond N GiB")
    p.add_argument("--dns-upstream", action="append", metavar="ADDR[:PORT]",
                   help="where sandboxes' resolvers forward queries (repeatable; default: "
                        "the host's resolvers, from /etc/resolv.conf)")
    p.add_argument("--internet-access", choices=["allow", "deny"],
                   help="the most any sandbox may have: allow (default) or deny the internet "
                        "(a create asking for it under deny gets its sandbox without)")
    p.add_argument("--default-internet-access", choices=["on", "off"],
                   help="the internet for a create that says nothing of it (default off)")
    p.add_argument("--never-allow", action="append", metavar="CIDR[,CIDR...]",
                   help="destinations no sandbox policy opens, whatever allowOut says "
                        "(default: link-local and this host's own addresses and networks)")
    p.add_argument("--build-timeout-s", type=float, metavar="S",
                   help="a Dockerfile build ends within S seconds (default 3600)")
    p.add_argument("--build-context-max-mib", type=int, metavar="N",
                   help="a build's context (the tar sent) may be N MiB (default 2048)")
    p.add_argument("--disk-limits", choices=["auto", "on", "off"],
                   help="give each sandbox a filesystem of its diskSizeMiB: auto (where the "
                        "host can, else warn), on (refuse to start without), off "
                        "(default auto)")
    p.add_argument("--config", help="TOML file with settings (flags and environment win)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    flags: dict[str, Any] = {
        "data_dir": args.data_dir, "listen": args.listen, "images_dir": args.images_dir,
        "public_url": args.public_url, "config": args.config, "log_level": args.log_level,
        "public_url_template": args.public_url_template,
        "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "browser_url_ttl_s": args.browser_url_ttl_s, "header_timeout_s": args.header_timeout_s,
        "idle_timeout_s": args.idle_timeout_s, "token_ttl_s": args.token_ttl_s,
        "max_pids_total": args.max_pids_total, "memory_overcommit": args.memory_overcommit,
        "memory_reserve_mib": args.memory_reserve_mib,
        "buffer_memory_mib": args.buffer_memory_mib,
        "retain_ended_h": args.retain_ended_h,
        "disk_limits": args.disk_limits,
        "registry_auth": args.registry_auth,
        "registry_cas": tuple(args.registry_ca) if args.registry_ca else None,
        "insecure_registries": (tuple(args.insecure_registry) if args.insecure_registry
                                else None),
        "registry_mirrors": tuple(args.registry_mirror) if args.registry_mirror else None,
        "images_max_gib": args.images_max_gib,
        "build_timeout_s": args.build_timeout_s,
        "dns_upstreams": tuple(args.dns_upstream) if args.dns_upstream else None,
        "internet_access": args.internet_access,
        "default_internet_access": args.default_internet_access,
        "never_allow": ",".join(args.never_allow) if args.never_allow else None,
        "build_context_max_mib": args.build_context_max_mib,
        "registries_allowed": tuple(args.registry_allow) if args.registry_allow else None,
        "max_connections_per_address": args.max_connections_per_address,
        "trusted_proxies": tuple(args.trusted_proxy) if args.trusted_proxy else None,
        "min_body_rate": args.min_body_rate,
        "min_body_rate_window_s": args.min_body_rate_window_s,
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
