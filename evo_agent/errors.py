"""Every error a user can see, and the one table that maps them to exit codes.

Each exception's ``str()`` is the message printed to the user, so it must say what went wrong
and, where it can, where (file, key) and what to do.  ``cli.main`` is the only place that turns
them into exit statuses (sysexits.h values, which systemd and shell scripts understand).
"""

from __future__ import annotations

import os


def printable(data: str | bytes, limit: int = 160) -> str:
    """Return ``data`` fit for one line of a message: control and non-UTF-8 bytes escaped as
    ``\\xNN``, at most ``limit`` characters (then "..." and how many more there were).

    What a server or a corrupt file holds goes to the terminal, the journal, ``status`` and
    ``state.json``: raw bytes there can garble a terminal or smuggle escape sequences."""
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    shown: list[str] = []
    used = 0
    for i, c in enumerate(text):
        piece = c if c.isprintable() else (
            f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        if used + len(piece) > limit:
            return "".join(shown) + f"... ({len(text) - i} more characters)"
        shown.append(piece)
        used += len(piece)
    return "".join(shown)


class EvoError(Exception):
    """Base class: an error with a user-facing message and an exit status."""

    exit_code: int = 70  # EX_SOFTWARE


class UsageError(EvoError):
    """The command line is wrong."""

    exit_code = 64  # EX_USAGE


class CaptureError(EvoError):
    """A capture given with --from cannot be read."""

    exit_code = 66  # EX_NOINPUT


class OutputError(EvoError):
    """An output file cannot be created."""

    exit_code = 73  # EX_CANTCREAT


class ConfigError(EvoError):
    """A configuration file is invalid: names the file, the key and what is wrong."""

    exit_code = 78  # EX_CONFIG

    def __init__(self, path: str | os.PathLike[str] | None, key: str | None, problem: str) -> None:
        self.path = str(path) if path is not None else None
        self.key = key
        self.problem = problem
        where = self.path or "<defaults>"
        if key:
            where += f": key '{key}'"
        super().__init__(f"{where}: {problem}")

    @classmethod
    def relayed(cls, message: str) -> ConfigError:
        """Return the error another process reported; its message already names file and key."""
        err = cls(None, None, message)
        err.args = (message,)
        return err


class PolicyError(EvoError):
    """The policy file shipped with the agent is malformed (a packaging bug, not a user error)."""

    exit_code = 70  # EX_SOFTWARE


class DeliveryError(EvoError):
    """A report could not be delivered now (the backend did not acknowledge it); try later."""

    exit_code = 75  # EX_TEMPFAIL


class NotPermitted(EvoError):
    """The verb changes state and needs root (or the daemon refused the caller)."""

    exit_code = 77  # EX_NOPERM


class StateError(EvoError):
    """The state directory cannot be used (missing, unwritable, or another writer holds it)."""

    exit_code = 74  # EX_IOERR


class DeviceKeyMissing(StateError):
    """The device key is gone from a unit that has used one: a new key could never be verified
    by the registry, so none is made; the unit must be re-enrolled."""


class UnitFailed(EvoError):
    """manufacture: the unit fails at least one check of the bill of materials."""

    exit_code = 10


class AlreadyEnrolled(EvoError):
    """manufacture: the VPNID is enrolled under another identity, or this unit holds another
    VPNID; re-enrolling needs --force."""

    exit_code = 11


class RegistryUnreachable(EvoError):
    """manufacture: no answer from the registry (refused, timed out, TLS failure, 5xx)."""

    exit_code = 69  # EX_UNAVAILABLE


class RegistryRefused(EvoError):
    """manufacture: the registry answered but refused the enrolment (token, invalid body)."""

    exit_code = 76  # EX_PROTOCOL


class PartialData(EvoError):
    """A collector got only part of what it reads; the part is kept and the reason reported.

    The collector's status is ``error`` (with ``code``), so ``evo-agent collectors``, the report
    and the registry show that its values come from a fallback, while the values it did get
    still go through the privacy filter like any others.
    """

    def __init__(self, raw: dict[str, object], code: str, reason: str) -> None:
        self.raw = raw
        self.code = code
        super().__init__(reason)


#: Python module -> the Debian 12 package that provides it (debian/control's Depends)
DEBIAN_PACKAGES = {"cryptography": "python3-cryptography", "systemd": "python3-systemd",
                   "pyudev": "python3-pyudev", "psutil": "python3-psutil",
                   "tomli": "python3-tomli"}


class MissingModule(EvoError):
    """A Python module the verb needs is not installed: names the Debian package that has it."""

    exit_code = 69  # EX_UNAVAILABLE

    def __init__(self, module: str) -> None:
        package = DEBIAN_PACKAGES.get(module)
        hint = f" (Debian: apt-get install {package})" if package else ""
        super().__init__(f"the Python module '{module}' is not installed{hint}")


class HostReadError(EvoError):
    """A file or command of the host cannot be read (used inside collectors, never fatal)."""


class CommandUnavailable(HostReadError):
    """A command is not installed, not permitted, or absent from a capture."""


class NotCaptured(CommandUnavailable):
    """A replayed capture holds no trace of a command (a tree of files only)."""


class CommandFailed(HostReadError):
    """A command ran but failed or timed out."""


#: Documented exit statuses of ``evo-agent`` (also listed in README and the man page).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "doctor: at least one check failed (each says how to fix it)",
    10: "manufacture: FAIL, the unit fails a check of the bill of materials (nothing written "
        "or sent)",
    11: "manufacture: already enrolled, the VPNID belongs to another identity at the registry "
        "or this unit holds another VPNID (re-enrol with --force)",
    64: "usage error: wrong command-line arguments",
    66: "a capture given with --from cannot be read",
    69: "unavailable: a Python module the verb needs is not installed (the message names its "
        "Debian package); manufacture: registry unreachable (no answer, TLS failure or 5xx), "
        "the unit passed, run it again",
    70: "internal error: a bug in evo-agent or a malformed policy file shipped with it",
    73: "an output file cannot be created",
    74: "the state directory cannot be used (disk full, read-only, unreadable), or the device "
        "key is gone from a unit that used one (re-enrol it)",
    75: "not delivered now (backend down, refused, no valid VPNID, or opted out; for opt-out and "
        "opt-in: the decision is taken here, its message to the registry waits and goes first): "
        "try later",
    76: "manufacture: the registry refused the enrolment (factory token, invalid request)",
    77: "not permitted: this verb needs root",
    78: "configuration error: the message names the file and the key",
    130: "interrupted",
}
