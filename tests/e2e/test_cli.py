"""The ``sandport`` command as a user types it: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .._server import ServerProcess, free_port


def sandport(*args: str, server: ServerProcess | None = None,
             key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDPORT_")}
    if server is not None:
        env["SANDPORT_BASE_URL"] = server.base_url
        env["SANDPORT_API_KEY"] = key or server.api_key
    return subprocess.run([sys.executable, "-m", "sandport", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_sandbox_commands(server: ServerProcess) -> None:
    created = sandport("sandbox", "create", "--image", "python", "--timeout", "7",
                       server=server)
    assert created.returncode == 0, created.stderr
    detail = json.loads(created.stdout)
    assert detail["status"] == "active" and detail["timeoutMinutes"] == 7
    sid = detail["id"]
    try:
        ran = sandport("sandbox", "exec", sid, "--", "echo hello; exit 4", server=server)
        assert ran.stdout == "hello\n" and ran.returncode == 4
        # several words are a command and its arguments: `sh -c 'a; b'` stays one -c line
        words = sandport("sandbox", "exec", sid, "--", "sh", "-c", "echo a; echo 'b c'",
                         server=server)
        assert words.stdout == "a\nb c\n", words.stderr
        spaced = sandport("sandbox", "exec", sid, "--", "printf", "%s|", "x y", "$HOME",
                          server=server)
        assert spaced.stdout == "x y|$HOME|"
        assert json.loads(sandport("sandbox", "get", sid, server=server).stdout)["id"] == sid
        listed = sandport("sandbox", "list", "--status", "active", server=server)
        assert listed.returncode == 0 and sid in listed.stdout
        exposed = sandport("sandbox", "expose", sid, "3000", "--auth", server=server)
        assert exposed.stdout == f"http://3000-{sid}.localhost:{server.port}/\n"
        assert "/_sandport/auth?grant=" in exposed.stderr
        assert sandport("sandbox", "unexpose", sid, "3000", server=server).returncode == 0
        refused = sandport("sandbox", "expose", sid, "22", server=server)
        assert refused.returncode != 0 and "1024 and 65535" in refused.stderr
    finally:
        stopped = sandport("sandbox", "stop", sid, server=server)
    assert stopped.returncode == 0 and "closed" in stopped.stdout
    assert sandport("sandbox", "stop", sid, server=server).returncode == 0


def test_image_list(server: ServerProcess) -> None:
    listed = sandport("image", "list", server=server)
    assert listed.returncode == 0
    python = next(line.split() for line in listed.stdout.splitlines()
                  if line.split()[0] == "python")
    assert python[1] == "builtin" and python[2] != "-"  # built: it has a size


def test_errors_are_one_line_without_traceback(server: ServerProcess) -> None:
    cases = [
        sandport("sandbox", "get", "0" * 20, server=server),
        sandport("sandbox", "list", server=server, key="spk_wrong"),
        sandport("sandbox", "create", "--image", "nosuch", server=server),
        sandport("sandbox", "create", "--mem", "1", server=server),
        sandport("sandbox", "exec", "0" * 20, "--", "true", server=server),
        sandport("image", "build", "nosuch", server=server),
        sandport("sandbox", "list", "--base-url", f"http://127.0.0.1:{free_port()}",
                 "--api-key", "k"),
        sandport("sandbox", "list"),  # no key anywhere
        sandport("serve", "--listen", "nonsense"),
        sandport("serve", "--public-url-template", "ftp://{id}.x"),
    ]
    for result in cases:
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_second_server_on_the_same_data_dir_is_refused(server: ServerProcess) -> None:
    env = {**os.environ, "SANDPORT_API_KEY": server.api_key}
    result = subprocess.run(
        [sys.executable, "-m", "sandport", "serve", "--data-dir", str(server.data_dir),
         "--listen", f"127.0.0.1:{free_port()}"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: another sandport serve")
    assert "Traceback" not in result.stderr


def test_usage_errors(server: ServerProcess) -> None:
    result = sandport("sandbox", "frobnicate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
