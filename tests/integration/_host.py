"""What a sandbox leaves on the host, counted the way an operator would look."""

from __future__ import annotations

import glob
import os
from pathlib import Path


def host_footprint(data_dir: Path) -> dict[str, int]:
    with open("/proc/self/mountinfo") as fh:
        mounts = sum(1 for line in fh if "/sandboxes/" in line.split()[4])
    netns = [n for n in os.listdir("/run/netns")] if os.path.isdir("/run/netns") else []
    return {
        "overlay mounts": mounts,
        "netns": sum(1 for n in netns if n.startswith("sp-")),
        "veths": sum(1 for n in os.listdir("/sys/class/net") if n.startswith("spv")),
        "cgroups": len(glob.glob("/sys/fs/cgroup/*/sandport/*/")) +
        len(glob.glob("/sys/fs/cgroup/sandport/*/")),
        "address slots": len(glob.glob("/run/sandport/slots-*/*")),
        "bundles": len(list((data_dir / "sandboxes").glob("*"))),
        "runc states": len(list((data_dir / "runc").glob("*"))),
    }


def sandbox_traces(data_dir: Path, sandbox_id: str) -> list[str]:
    """Anything on the host still named after this sandbox."""
    traces = glob.glob(f"/sys/fs/cgroup/*/sandport/{sandbox_id}")
    traces += [p for p in (f"/run/netns/sp-{sandbox_id}",
                           f"/sys/class/net/spv{sandbox_id[:12]}",
                           str(data_dir / "sandboxes" / sandbox_id),
                           str(data_dir / "runc" / sandbox_id)) if os.path.exists(p)]
    with open("/proc/self/mountinfo") as fh:
        traces += [line for line in fh if sandbox_id in line]
    return traces
