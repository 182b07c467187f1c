"""CRIU, for suspend to disk: finding one that works with this kernel, and reading its logs.

Messages for the client name CRIU's version and what it said, never host paths.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

CANDIDATES = ("/usr/local/sbin/criu",)  # scripts/build-criu.sh puts one there


async def find() -> tuple[str | None, str | None]:
    """A CRIU that passes its own check here, or None and why there is none."""
    found = [*CANDIDATES, shutil.which("criu") or ""]
    tried = []
    for binary in dict.fromkeys(c for c in found if c and os.access(c, os.X_OK)):
        proc = await asyncio.create_subprocess_exec(
            binary, "check", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            return binary, None
        errors = [_message(line) for line in out.decode(errors="replace").splitlines()
                  if "Error" in line]
        tried.append(f"CRIU {await _version(binary)} fails its own check "
                     f"({errors[-1] if errors else proc.returncode})")
    if not tried:
        return None, ("suspend to disk needs CRIU (>= 4.1 on Linux >= 6.13) for runc "
                      "checkpoint; none is installed (scripts/build-criu.sh builds one)")
    return None, ("suspend to disk needs a CRIU that works with this kernel (>= 4.1 on Linux "
                  ">= 6.13; scripts/build-criu.sh builds one): " + "; ".join(tried))


def last_error(log_path: Path) -> str:
    """The last error line of a CRIU log, without its timestamp."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [_message(line) for line in lines
              if "Error" in line and "RLIMIT_NOFILE" not in line]
    return errors[-1][:300] if errors else ""


def _message(line: str) -> str:
    """A CRIU log line without its timestamp and source location."""
    return line.rsplit("):", 1)[-1].strip()


async def _version(binary: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary, "--version", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    words = out.decode(errors="replace").split()
    return words[1] if len(words) > 1 and words[0] == "Version:" else "(version unknown)"
