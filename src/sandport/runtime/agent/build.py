"""Compile the agent once per source version into a host directory (static, so it runs in
any image whatever its libc)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from ...errors import RuntimeFailure


def ensure_agent(bin_dir: Path) -> Path:
    source = resources.files(__package__).joinpath("agent.c").read_bytes()
    target = bin_dir / f"sandport-agent-{hashlib.sha256(source).hexdigest()[:12]}"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeFailure(
            "a C compiler is needed once to build the in-sandbox agent: "
            "apt install gcc libc6-dev"
        )
    bin_dir.mkdir(parents=True, exist_ok=True)
    src_path = bin_dir / f".agent-{os.getpid()}.c"
    tmp = bin_dir / f".agent-{os.getpid()}"
    src_path.write_bytes(source)
    try:
        built = subprocess.run([compiler, "-O2", "-static", "-o", str(tmp), str(src_path)],
                               capture_output=True, text=True)
        if built.returncode != 0:
            raise RuntimeFailure(f"building the in-sandbox agent failed: {built.stderr[-500:]}")
        tmp.chmod(0o755)
        tmp.replace(target)
    finally:
        src_path.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return target
