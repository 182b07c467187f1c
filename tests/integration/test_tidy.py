"""What sandport leaves on a host: only what something still needs (README: "What stays
on the host")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_last_server_out_leaves_the_host_as_it_found_it() -> None:
    done = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", sys.executable, "-m",
         "tests.integration._tidy_host"], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == 9, done.stdout
