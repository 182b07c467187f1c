"""Small file helpers of the runtime and image store: JSON state files (written
atomically) and removing a tree however deep it is."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

REMOVE_TIMEOUT_S = 600


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    """The object in ``path``, or {} if it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remove_tree(path: str | Path, *, dir_fd: int | None = None) -> None:
    """Remove ``path`` and everything below it, never following a symlink; what cannot be
    removed stays (as with ``ignore_errors``). A sandbox or an image layer may nest
    directories deeper than Python's recursion limit, where shutil.rmtree (recursive up to
    Python 3.12) raises RecursionError: GNU rm, which walks any depth, finishes the job."""
    try:
        shutil.rmtree(path, ignore_errors=True, dir_fd=dir_fd)
    except RecursionError:
        target = str(path) if dir_fd is None else f"/proc/self/fd/{dir_fd}/{path}"
        subprocess.run(["rm", "-rf", "--", target], pass_fds=() if dir_fd is None else (dir_fd,),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=REMOVE_TIMEOUT_S, check=False)
