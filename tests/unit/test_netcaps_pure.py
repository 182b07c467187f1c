"""The operator's network caps, pure (control/netcaps.py): what a policy becomes under
them, and where the never-allowed ranges go in a sandbox's filter."""

from __future__ import annotations

import pytest

from sandport import errors
from sandport.control.netcaps import NetworkCaps, caps_from, host_networks
from sandport.control.requests import NetworkPolicy, internet_asked
from sandport.runtime.network import EgressPolicy, egress_rules, lease_for
from sandport.settings import ServerSettings

NEVER = ("169.254.0.0/16", "192.168.7.0/24")


def test_internet_default_and_cap() -> None:
    open_default = NetworkCaps(internet=True, default_internet=True)
    assert open_default.apply(NetworkPolicy(), None).allow_internet_access is True
    assert open_default.apply(NetworkPolicy(), False).allow_internet_access is False
    closed = NetworkCaps(internet=False, default_internet=True)
    capped = closed.apply(NetworkPolicy(), True)
    assert (capped.allow_internet_access, capped.internet_capped) == (False, True)
    assert capped.to_wire()["internetAccessCapped"] is True
    assert "internetAccessCapped" not in closed.apply(NetworkPolicy(), False).to_wire()
    assert NetworkCaps().apply(NetworkPolicy(), None).allow_internet_access is False


@pytest.mark.parametrize("allow_out, refused", [
    (("169.254.169.254/32",), "allowOut[0]"),
    (("1.1.1.1/32", "192.168.7.9/32"), "allowOut[1]"),
    (("192.168.7.0/25",), "allowOut[0]"),
    (("192.168.0.0/16",), None),  # contains one: taken, the filter closes that part
    (("0.0.0.0/0",), None),
])
def test_allow_out_inside_a_never_allowed_range_is_forbidden(
        allow_out: tuple[str, ...], refused: str | None) -> None:
    caps = NetworkCaps(never=NEVER)
    policy = NetworkPolicy(allow_out=allow_out)
    if refused is None:
        assert caps.apply(policy, None).allow_out == allow_out
        return
    with pytest.raises(errors.Forbidden, match=rf"{refused.replace('[', '.')}.*--never-allow"):
        caps.apply(policy, None)


def test_never_allowed_ranges_come_before_allow_out_in_the_filter() -> None:
    lease = lease_for("10.77.0.0/16", 1, "abcdef0123456789abcd")
    rules = egress_rules(lease, EgressPolicy(True, ("0.0.0.0/0",), (), NEVER)).splitlines()
    never = rules.index("-A OUTPUT -d 169.254.0.0/16 -j REJECT --reject-with "
                        "icmp-admin-prohibited")
    assert never < rules.index("-A OUTPUT -d 0.0.0.0/0 -j ACCEPT")


def test_caps_from_settings() -> None:
    caps = caps_from(ServerSettings(never_allow=("link-local", "10.9.0.0/16", "10.9.1.1")))
    assert caps.never == ("169.254.0.0/16", "10.9.0.0/16", "10.9.1.1/32")
    assert caps_from(ServerSettings(internet_access="deny")).internet is False
    default = caps_from(ServerSettings())
    assert default.never[0] == "169.254.0.0/16" and set(host_networks()) <= set(default.never)
    for flags, word in (({"internet_access": "maybe"}, "internet_access"),
                        ({"never_allow": "10.0.0.0/8,metadata"}, "never_allow"),
                        ({"default_internet_access": "sometimes"}, "default_internet")):
        with pytest.raises(errors.ValidationFailed, match=word):
            ServerSettings.load(flags, environ={})
    assert ServerSettings.load({"default_internet_access": "on"},
                               environ={}).default_internet_access is True


def test_what_a_create_said_of_the_internet() -> None:
    assert internet_asked({}) is None
    assert internet_asked({"allowInternetAccess": None}) is None
    assert internet_asked({"network": {"allowInternetAccess": True}}) is True
    assert internet_asked({"allowInternetAccess": False,
                           "network": {"allowInternetAccess": True}}) is False


@pytest.mark.parametrize("allow_out, refused", [
    (("0.0.0.0/0",), True), (("0.0.0.0/1", "128.0.0.0/1"), True), (("8.8.0.0/16",), True),
    (("8.8.8.0/24",), False), (("8.8.8.8/32",), False),
    (("10.0.0.0/8",), False), (("192.168.0.0/16", "172.16.0.0/12"), False),
])
def test_under_the_internet_cap_allow_out_cannot_open_the_internet(
        allow_out: tuple[str, ...], refused: bool) -> None:
    caps = NetworkCaps(internet=False)
    policy = NetworkPolicy(allow_out=allow_out)
    if refused:
        with pytest.raises(errors.Forbidden, match="--internet-access deny"):
            caps.apply(policy, None)
    else:
        assert caps.apply(policy, None).allow_out == allow_out
    assert NetworkCaps().apply(policy, None).allow_out == allow_out  # uncapped: taken


def test_a_resolver_goes_with_the_internet_or_uncapped_allow_out() -> None:
    from sandport.control.sandboxes import egress_of
    only_out = NetworkPolicy(allow_out=("198.51.100.7/32",))
    assert egress_of(only_out, NetworkCaps()).serves_dns is True
    assert egress_of(only_out, NetworkCaps(internet=False)).serves_dns is False
    assert egress_of(NetworkPolicy(allow_internet_access=True), NetworkCaps()).serves_dns
    assert egress_of(NetworkPolicy(), NetworkCaps()).serves_dns is False


def test_caps_reapplied_to_a_stored_policy_narrow_it_and_never_refuse() -> None:
    stored = NetworkPolicy(allow_internet_access=True,
                           allow_out=("0.0.0.0/1", "203.0.113.0/24", "169.254.0.0/16"))
    closed = NetworkCaps(internet=False, never=("169.254.0.0/16",)).reapply(stored)
    assert closed.allow_internet_access is False and closed.internet_capped is True
    assert closed.allow_out == ("203.0.113.0/24", "169.254.0.0/16")  # the filter refuses it
    back = NetworkCaps().reapply(closed)
    assert back.allow_internet_access is True and back.internet_capped is False
    assert NetworkCaps().reapply(NetworkPolicy()) == NetworkPolicy()
