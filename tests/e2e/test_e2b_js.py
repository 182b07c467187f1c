"""The official E2B JS SDK (npm ``e2b``, pinned in tests/e2e/js/package-lock.json and
installed by the test command), unchanged, against a real ``sandport serve``: the same
control calls and envd services as the Python SDK, through its own Connect client
(connect-es over fetch), pointed at the server by the environment only."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from .._server import ServerProcess

JS = Path(__file__).parent / "js"


def test_the_js_sdk(server: ServerProcess) -> None:
    beside = JS / ".node" / "node_modules" / ".bin" / "node"  # (when the system's is too old)
    node = str(beside) if beside.exists() else shutil.which("node")
    if node is None or not (JS / "node_modules" / "e2b").is_dir():
        pytest.fail("node and tests/e2e/js/node_modules are installed by scripts/install.sh "
                    "test (npm ci in tests/e2e/js)")
    env = {**os.environ, "E2B_API_URL": server.base_url, "E2B_SANDBOX_URL": server.base_url,
           "E2B_API_KEY": server.api_key, "RUN": secrets.token_hex(4)}
    run = subprocess.run([node, str(JS / "smoke.mjs")], env=env, capture_output=True,
                         text=True, timeout=300, cwd=JS)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["info"]["templateId"] == "python" and seen["info"]["metadata"]["run"] == env["RUN"]
    assert seen["run"] == {"exitCode": 0, "stdout": "out\nhé", "stderr": "err\n",
                           "streamed": "out\nhé"}
    assert seen["exit"] == {"isCommandExit": True, "exitCode": 3, "stdout": "before\n"}
    assert seen["listed"] is True and seen["killed"] is True and seen["killedAgain"] is False
    assert seen["stdin"] == "to stdin\n"
    assert seen["read"] == "from js" and seen["blob"] is True
    assert seen["list"] == [["a.txt", "file"], ["blob.bin", "file"]]
    assert seen["exists"] == [True, False] and seen["madeDir"] == [True, False]
    assert seen["renamed"] == "/tmp/js/d/b.txt" and seen["removed"] is True
    assert seen["watched"] is True and seen["ptyKilled"] is True
    assert seen["host"].startswith("3000-") and seen["kill"] is True
    server.assert_clean_log()
