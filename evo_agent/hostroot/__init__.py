"""The one door through which collectors read the system.

Every file a collector reads and every command it runs goes through a :class:`Host`
(``base.py``).  The kinds of host, one file each:

* :class:`LiveHost` (``live.py``) reads the running system (or a directory tree mounted somewhere,
  e.g. an image);
* :class:`RecordingHost` (``recording.py``) reads the live system and copies everything it hands
  out into a capture directory, which ``evo-agent capture`` packs as a .tar.gz (``capture.py``);
* :class:`ReplayHost` (``tree.py``) reads such a capture unpacked, so that ``evo-agent inventory
  --from`` gives the same inventory as the live run did; :class:`ArchiveHost` (``archive.py``) does
  the same from the .tar.gz itself, read into memory, without unpacking it.

Capture layout: files keep their path relative to ``/`` (``sys/...``, ``proc/...``, ``etc/...``,
``run/udev/...``); symbolic links are kept as links, because sysfs is made of them and collectors
follow them (``/sys/class/net/eth0 -> ../../devices/pci0000:00/...``).  The output of a command is
``commands/<name>.txt``, where the name is the command's base name and its arguments joined with
``_`` (plain ``dmidecode`` is ``commands/dmidecode.txt``); a command that failed leaves
``commands/<name>.error`` with its message instead.

A directory listing is replayed from what the capture holds: sub-directories and links are
recorded when listed, regular files only when read.  Collectors must therefore pick the entries they
need by name and then read them, which they all do.
"""

from evo_agent.hostroot.archive import ArchiveHost
from evo_agent.hostroot.base import COMMAND_PATH, MAX_READ, Host, command_name
from evo_agent.hostroot.capture import CaptureSource, pack_capture
from evo_agent.hostroot.live import LiveHost
from evo_agent.hostroot.recording import RecordingHost
from evo_agent.hostroot.tree import ReplayHost

__all__ = ["COMMAND_PATH", "MAX_READ", "ArchiveHost", "CaptureSource", "Host", "LiveHost",
           "RecordingHost", "ReplayHost", "command_name", "pack_capture"]
