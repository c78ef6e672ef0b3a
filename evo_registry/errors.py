"""Every error the registry shows, to an HTTP client or on the command line.

An ``HttpError`` carries its status and the reason sent back as ``{"error": reason}``; the WSGI
app turns it into the response in one place.  ``RegistryError`` is for the command line (exit
status, message), like the agent's ``evo_agent.errors``.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of command-line errors: a user-facing message and an exit status."""

    exit_code: int = 70  # EX_SOFTWARE


class ConfigError(RegistryError):
    """The registry's configuration is invalid (names the file and the key)."""

    exit_code = 78  # EX_CONFIG


class DatabaseError(RegistryError):
    """The database cannot be opened or migrated."""

    exit_code = 69  # EX_UNAVAILABLE


class HttpError(Exception):
    """A request is refused: status, reason for the client, optional extra headers."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class UnknownDevice(HttpError):
    """The VPNID is not enrolled."""

    def __init__(self) -> None:
        super().__init__(404, "unknown vpnid")


class RateLimited(HttpError):
    """The device sent too many reports in the window."""

    def __init__(self, retry_after: int, what: str = "too many reports") -> None:
        super().__init__(429, f"{what}: retry after {retry_after} s",
                         {"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class NotAuthentic(HttpError):
    """A signed message whose VPNID is not enrolled or whose signature does not match its key.

    Both get this one answer: a different one for an unknown VPNID would tell anyone which
    VPNIDs exist.
    """

    REASON = "unknown vpnid or signature does not match the key enrolled for it"

    def __init__(self) -> None:
        super().__init__(401, self.REASON)


class Objected(HttpError):
    """The unit's owner objected to reporting: its reports are refused until it opts in."""

    def __init__(self) -> None:
        super().__init__(403, "this unit's owner objected to reporting: nothing is stored "
                              "until 'evo-agent opt-in' sends its withdrawal")
