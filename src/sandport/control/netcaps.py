"""The operator's caps on sandboxes' networks, applied to every policy a create or a
``PUT .../network`` asks for.

* ``--internet-access allow|deny``: the most any sandbox may have. Under ``deny`` a policy
  asking for the internet still gets its sandbox, without it: its ``network`` says
  ``"internetAccessCapped": true`` (the e2b SDK asks for the internet on every create).
* ``--default-internet-access on|off``: what a create that says nothing gets (off: a
  sandbox opens nothing unless asked, as before; Hyperbrowser and E2B default to on).
* ``--never-allow CIDR,...``: destinations no policy opens, whatever ``allowOut`` says
  (they are refused before ``allowOut`` is looked at). Default ``link-local,host``:
  169.254.0.0/16 (cloud metadata) and this host's own addresses and networks, as found
  at start; the words may be mixed with CIDRs.
  An ``allowOut`` entry inside one of them is refused (403) naming the cap; one that
  merely contains one (``0.0.0.0/0``) is taken, the never-allowed part still closed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import subprocess
from dataclasses import dataclass

from ..errors import Forbidden
from ..runtime.network import NOT_INTERNET
from ..settings import ServerSettings
from .requests import NetworkPolicy

log = logging.getLogger("sandport.control")

LINK_LOCAL = "169.254.0.0/16"
NOT_INTERNET_NETS = tuple(ipaddress.IPv4Network(n) for n in NOT_INTERNET)
SANDBOX_VETH_PREFIX = "spv"


@dataclass(frozen=True, slots=True)
class NetworkCaps:
    internet: bool = True
    default_internet: bool = False
    never: tuple[str, ...] = ()  # normalised IPv4 CIDRs

    def apply(self, policy: NetworkPolicy, internet_asked: bool | None) -> NetworkPolicy:
        """``policy`` as the caps let it be (``internet_asked`` None: the request said
        nothing of the internet, so the default applies); Forbidden for an ``allowOut``
        entry inside a never-allowed range."""
        for index, cidr in enumerate(policy.allow_out):
            inside = next((n for n in self.never if _inside(cidr, n)), None)
            if inside is not None:
                raise Forbidden(f"allowOut[{index}] ({cidr}) is inside {inside}, which this "
                                "server never lets a sandbox reach (--never-allow)")
        if not self.internet:
            for index, cidr in enumerate(policy.allow_out):
                if _public_breadth(cidr) > WIDEST_PUBLIC_UNDER_CAP:
                    raise Forbidden(
                        f"allowOut[{index}] ({cidr}) opens the internet, which this server "
                        f"denies sandboxes (--internet-access deny); name addresses, at "
                        f"most {WIDEST_PUBLIC_UNDER_CAP} public ones an entry")
        wanted = self.default_internet if internet_asked is None else internet_asked
        capped = wanted and not self.internet
        return dataclasses.replace(policy, allow_internet_access=wanted and self.internet,
                                   internet_capped=capped)


    def reapply(self, policy: NetworkPolicy) -> NetworkPolicy:
        """A stored policy under these caps, which may have changed since it was taken
        (a restart with other settings): never refused, only narrowed. Entries inside a
        never-allowed range stay (the filter refuses those ranges before allowOut); under
        ``--internet-access deny`` the internet goes, and so do the allowOut entries that
        would open it."""
        asked = policy.allow_internet_access or policy.internet_capped
        if not self.internet:
            kept = tuple(c for c in policy.allow_out
                         if _public_breadth(c) <= WIDEST_PUBLIC_UNDER_CAP)
            policy = dataclasses.replace(policy, allow_out=kept)
        return dataclasses.replace(policy, allow_internet_access=asked and self.internet,
                                   internet_capped=asked and not self.internet)


WIDEST_PUBLIC_UNDER_CAP = 256  # addresses of public space one allowOut entry may open


def _public_breadth(cidr: str) -> int:
    """How many addresses of ``cidr`` are outside the private and reserved ranges (two
    CIDRs overlap only where one holds the other)."""
    network = ipaddress.IPv4Network(cidr)
    if any(network.subnet_of(n) for n in NOT_INTERNET_NETS):
        return 0
    return network.num_addresses - sum(n.num_addresses for n in NOT_INTERNET_NETS
                                       if n.subnet_of(network))


def _inside(cidr: str, never: str) -> bool:
    return ipaddress.IPv4Network(cidr).subnet_of(ipaddress.IPv4Network(never))


def host_networks() -> list[str]:
    """This host's own IPv4 addresses (as /32) and the networks they are on, but not the
    sandboxes' veths (their subnet is closed apart) nor loopback."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True,
                             text=True, check=True, timeout=10).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("the host's addresses could not be listed (%s): only link-local is "
                    "never allowed", exc)
        return []
    found: list[str] = []
    for link in links:
        if link.get("ifname", "").startswith(SANDBOX_VETH_PREFIX) or link.get("ifname") == "lo":
            continue
        for info in link.get("addr_info") or []:
            if info.get("family") != "inet":
                continue
            with_prefix = f"{info['local']}/{info.get('prefixlen', 32)}"
            found += [f"{info['local']}/32",
                      str(ipaddress.IPv4Network(with_prefix, strict=False))]
    return list(dict.fromkeys(found))


DEFAULT_NEVER = ("link-local", "host")


def caps_from(settings: ServerSettings) -> NetworkCaps:
    """The caps of ``settings``; in ``never_allow`` the words ``link-local`` and ``host``
    stand for 169.254.0.0/16 and this host's own addresses and networks (the default)."""
    given = settings.never_allow if settings.never_allow is not None else DEFAULT_NEVER
    never: list[str] = []
    for item in given:
        never += [LINK_LOCAL] if item == "link-local" else \
            host_networks() if item == "host" else [item]
    normal = tuple(dict.fromkeys(str(ipaddress.IPv4Network(c, strict=False)) for c in never))
    return NetworkCaps(settings.internet_access == "allow", settings.default_internet_access,
                       normal)


__all__ = ["NetworkCaps", "caps_from", "host_networks"]
