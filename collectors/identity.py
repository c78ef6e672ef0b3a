"""Identity: the VPNID provisioned at manufacturing, and the LAN server (NetBIOS) name."""

from __future__ import annotations

import re

from evo_agent.collector import Collector, Raw
from evo_agent.config import DEFAULT_VPNID_FILE
from evo_agent.hostroot import Host

#: Samba's include chains are short; a bound keeps a loop of includes from spinning.
_MAX_INCLUDE_DEPTH = 4


class Identity(Collector):
    name = "identity"
    description = "VPNID file and NetBIOS name (smb.conf, else the host name)"
    fields = {
        "vpnid": "the device serial, from the file written at manufacturing",
        "netbios_name": "LAN server name: smb.conf [global] 'netbios name', else the host name",
        "hostname": "the kernel host name, read only when smb.conf names no NetBIOS name "
                    "(never sent; the NetBIOS name is derived from it)",
    }
    options = {"vpnid_file": (str, DEFAULT_VPNID_FILE),
               "smb_conf": (str, "/etc/samba/smb.conf")}

    def collect(self, host: Host) -> Raw:
        vpnid = host.read_attr(self.opts["vpnid_file"])
        netbios = smb_netbios_name(host, self.opts["smb_conf"])
        hostname = None
        if netbios is None:
            # Only then: a capture should not carry the host name (often the owner's name)
            # when Samba already gives the name that is sent.
            hostname = (host.read_attr("/proc/sys/kernel/hostname")
                        or host.read_attr("/etc/hostname"))
            if hostname:
                netbios = netbios_from_hostname(hostname)
        return {"vpnid": vpnid or None, "netbios_name": netbios, "hostname": hostname or None}


def smb_netbios_name(host: Host, path: str, depth: int = 0) -> str | None:
    """Return 'netbios name' of the [global] section of smb.conf (includes followed), or None."""
    try:
        text = host.read_text(path, 1024 * 1024)
    except OSError:
        return None
    section = "global"  # parameters before any section header belong to [global]
    value: str | None = None
    pending = ""
    for raw_line in text.splitlines():
        # smb.conf continues a line ending in a backslash
        if raw_line.rstrip().endswith("\\"):
            pending += raw_line.rstrip()[:-1]
            continue
        line = (pending + raw_line).strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and "]" in line:
            section = line[1:line.index("]")].strip().lower()
            continue
        if section != "global" or "=" not in line:
            continue
        key, _, val = line.partition("=")
        key = re.sub(r"\s+", " ", key.strip().lower())
        val = val.strip()
        if key == "netbios name":
            value = val.strip('"')  # the last one wins, as in testparm
        elif key == "include" and depth < _MAX_INCLUDE_DEPTH and val.startswith("/") \
                and "%" not in val:
            # An included file is read in place (Samba's loadparm); '%' macros depend on the
            # client and cannot be resolved here.
            included = smb_netbios_name(host, val, depth + 1)
            if included:
                value = included
    return netbios_from_hostname(value) if value else None


def netbios_from_hostname(hostname: str) -> str | None:
    """Return the NetBIOS form of a host name: first label, upper case, at most 15 characters."""
    label = hostname.strip().split(".")[0]
    label = re.sub(r'[\\/:*?"<>|\s]', "", label)
    return label[:15].upper() or None
