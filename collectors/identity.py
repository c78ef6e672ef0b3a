"""Identity: the VPNID provisioned at manufacturing, and the LAN server (NetBIOS) name."""

from __future__ import annotations

import re

from evo_agent.collector import Collector, Raw
from evo_agent.hostroot import Host


class Identity(Collector):
    name = "identity"
    description = "VPNID file and NetBIOS name (smb.conf, else the host name)"
    fields = {
        "vpnid": "the device serial, from the file written at manufacturing",
        "netbios_name": "LAN server name: smb.conf [global] 'netbios name', else the host name",
        "hostname": "the kernel host name (never sent; the NetBIOS name is derived from it)",
    }
    options = {"vpnid_file": (str, "/etc/evo-agent/vpnid"),
               "smb_conf": (str, "/etc/samba/smb.conf")}

    def collect(self, host: Host) -> Raw:
        vpnid = host.read_attr(self.opts["vpnid_file"])
        hostname = host.read_attr("/proc/sys/kernel/hostname") or host.read_attr("/etc/hostname")
        netbios = smb_netbios_name(host, self.opts["smb_conf"])
        if netbios is None and hostname:
            netbios = netbios_from_hostname(hostname)
        return {"vpnid": vpnid or None, "netbios_name": netbios, "hostname": hostname or None}


def smb_netbios_name(host: Host, path: str) -> str | None:
    """Return 'netbios name' of the [global] section of smb.conf, or None."""
    try:
        text = host.read_text(path, 1024 * 1024)
    except OSError:
        return None
    section = None
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
        if re.sub(r"\s+", " ", key.strip().lower()) == "netbios name":
            value = val.strip().strip('"')  # the last one wins, as in testparm
    return netbios_from_hostname(value) if value else None


def netbios_from_hostname(hostname: str) -> str | None:
    """Return the NetBIOS form of a host name: first label, upper case, at most 15 characters."""
    label = hostname.strip().split(".")[0]
    label = re.sub(r'[\\/:*?"<>|\s]', "", label)
    return label[:15].upper() or None


