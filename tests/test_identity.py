"""The identity collector: VPNID file, NetBIOS name from smb.conf (with includes) or host name."""

from __future__ import annotations

from pathlib import Path

from collectors.identity import Identity, netbios_from_hostname
from evo_agent.hostroot import ReplayHost


def tree(tmp_path: Path, files: dict[str, str]) -> ReplayHost:
    for name, text in files.items():
        target = tmp_path / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return ReplayHost(tmp_path)


def test_netbios_name_from_smb_conf_and_no_host_name_read(tmp_path: Path) -> None:
    host = tree(tmp_path, {
        "/etc/samba/smb.conf": "[global]\n  workgroup = HOME\n  NetBIOS   Name = evo-living\n"
                               "[homes]\n  netbios name = not-this\n  path = /home/%U\n",
        "/proc/sys/kernel/hostname": "johnsmith-pc\n",
        "/etc/evo-agent/identity/vpnid": "EVO-000123\n",
    })
    assert Identity().collect(host) == {"vpnid": "EVO-000123", "netbios_name": "EVO-LIVING",
                                        "hostname": None}


def test_included_file_is_followed(tmp_path: Path) -> None:
    """A 'netbios name' set in an included file is Samba's name (loadparm reads it in place)."""
    host = tree(tmp_path, {
        "/etc/samba/smb.conf": "[global]\ninclude = /etc/samba/evo.conf\n",
        "/etc/samba/evo.conf": "netbios name = EVO-LIVING\ninclude = /etc/samba/evo.conf\n",
        "/proc/sys/kernel/hostname": "johnsmith-pc\n",
    })
    raw = Identity().collect(host)
    assert raw["netbios_name"] == "EVO-LIVING"
    assert raw["hostname"] is None


def test_host_name_when_samba_names_nothing(tmp_path: Path) -> None:
    host = tree(tmp_path, {
        "/etc/samba/smb.conf": "[global]\ninclude = /etc/samba/%m.conf\n# netbios name = x\n",
        "/proc/sys/kernel/hostname": "evo-kitchen.home.arpa\n",
    })
    assert Identity().collect(host) == {"vpnid": None, "netbios_name": "EVO-KITCHEN",
                                        "hostname": "evo-kitchen.home.arpa"}


def test_continuation_lines_and_last_value_wins(tmp_path: Path) -> None:
    host = tree(tmp_path, {
        "/etc/samba/smb.conf": "netbios name = first\n[global]\nnetbios \\\n name = second\n",
    })
    assert Identity().collect(host)["netbios_name"] == "SECOND"


def test_netbios_form_of_host_names() -> None:
    assert netbios_from_hostname("a-very-long-host-name-indeed") == "A-VERY-LONG-HOS"
    assert netbios_from_hostname("evo.local") == "EVO"
    assert netbios_from_hostname(" ") is None
