"""The raw netlink parser against garbage and real kernel answers; the [delivery] config keys."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo_agent.config import load
from evo_agent.delivery import netlink
from evo_agent.errors import ConfigError


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_parse_events_never_raises_on_garbage(data: bytes) -> None:
    events = netlink.parse_events(data)
    assert all(e.kind in ("link_up", "new_link", "default_route") for e in events)


def _msg(kind: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, 0, 0) + payload


def test_parse_events_link_up_and_default_route() -> None:
    name = b"wg0\0"
    attr = struct.pack("=HH", 4 + len(name), netlink.IFLA_IFNAME) + name
    up = netlink.IFF_UP | netlink.IFF_LOWER_UP
    link = struct.pack("=BxHiII", 0, 65534, 7, up, netlink.IFF_UP) + attr
    down = struct.pack("=BxHiII", 0, 65534, 7, netlink.IFF_UP, 0) + attr  # up, no carrier yet
    new = struct.pack("=BxHiII", 0, 65534, 8, 0, 0xFFFFFFFF) + attr  # a new interface
    route = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, netlink.RT_TABLE_MAIN, 3, 0, 1, 0)
    # wg-quick's full tunnel: default route in table 51820 (rtm_table says RT_TABLE_COMPAT)
    wgq = struct.pack("=BBBBBBBBI", socket.AF_INET6, 0, 0, 0, 252, 3, 0, 1, 0)
    local = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 255, 2, 254, 2, 0)
    unreachable = struct.pack("=BBBBBBBBI", socket.AF_INET6, 0, 0, 0, 254, 3, 0, 7, 0)
    data = (_msg(netlink.RTM_NEWLINK, link) + _msg(netlink.RTM_NEWLINK, down)
            + _msg(netlink.RTM_NEWLINK, new) + _msg(netlink.RTM_NEWROUTE, route)
            + _msg(netlink.RTM_NEWROUTE, wgq) + _msg(netlink.RTM_NEWROUTE, local)
            + _msg(netlink.RTM_NEWROUTE, unreachable))
    assert netlink.parse_events(data) == [netlink.Event("link_up", "wg0", 7),
                                          netlink.Event("new_link", "wg0", 8),
                                          netlink.Event("default_route", "ipv4"),
                                          netlink.Event("default_route", "ipv6")]


def test_route_lookup_on_this_kernel() -> None:
    assert netlink.route_oif("127.0.0.1") == socket.if_nametoindex("lo")
    assert netlink.link_up("lo")  # up, and carrier 1
    assert netlink.ifindex("no-such-if0") is None
    assert netlink.link_up("no-such-if0") is False


def test_monitor_socket_opens_and_drains_without_blocking() -> None:
    with netlink.open_monitor(0) as mon:
        started = time.monotonic()
        events = netlink.drain(mon)  # whatever the host did meanwhile: it returns at once
        assert time.monotonic() - started < 1.0
        assert all(isinstance(e, netlink.Event) for e in events)
        with pytest.raises(BlockingIOError):
            mon.recv(1)


def test_delivery_keys_are_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[delivery]\nvpn_url = "ftp://x"\n')
    with pytest.raises(ConfigError, match=r"agent.toml: key 'delivery.vpn_url': must be an http"):
        load(cfg)
    cfg.write_text('[delivery]\nvpn_interface = "a-name-longer-than-15"\n')
    with pytest.raises(ConfigError, match=r"delivery\.vpn_interface"):
        load(cfg)
    cfg.write_text('[delivery]\ntotal_timeout = 0\n')
    with pytest.raises(ConfigError, match="greater than 0"):
        load(cfg)
    cfg.write_text('[delivery]\nca_bundle = "relative.pem"\n')
    with pytest.raises(ConfigError, match="absolute path"):
        load(cfg)
    cfg.write_text('[delivery]\nproxy = "x"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load(cfg)
    cfg.write_text("")
    values = load(cfg).values
    assert values["delivery"]["ca_bundle"] == "/etc/evo-agent/ca.pem"
    assert values["agent"]["host_root"] == "/"
    assert values["agent"]["control_socket"] == "/run/evo-agent/control.sock"
