"""The running system, or a system image unpacked under another directory."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence

from evo_agent.errors import CommandFailed, CommandUnavailable
from evo_agent.hostroot.base import COMMAND_PATH
from evo_agent.hostroot.tree import TreeHost


class LiveHost(TreeHost):
    """The running system (root ``/``), or a system image unpacked under another directory."""

    def __init__(self, root: str | os.PathLike[str] = "/", *,
                 allow_commands: bool | None = None) -> None:
        super().__init__(root)
        # Commands of this machine describe this machine only: never mix them into another root.
        self.allow_commands = (str(root) == "/") if allow_commands is None else allow_commands
        self._slash = str(root) == "/"

    # On "/" itself, the kernel resolves paths: walking them here one component at a time (as
    # a root elsewhere needs, to stay inside it) made 1,950 lstat calls and most of the
    # collectors' Python work in a run.  Only plain absolute paths take that way: the walk
    # drops ".." before it resolves links, the kernel after.
    def _kernel_resolves(self, path: str) -> bool:
        return self._slash and path.startswith("/") and "/." not in path and "//" not in path

    def _opening(self, path: str) -> tuple[str, int]:
        if self._kernel_resolves(path):
            return path, 0
        return super()._opening(path)

    def readlink(self, path: str) -> str | None:
        if not self._kernel_resolves(path):
            return super().readlink(path)
        try:
            return os.readlink(path.rstrip("/") or "/")
        except OSError as exc:
            # a loop above the link: the walk raises it
            return super().readlink(path) if exc.errno == errno.ELOOP else None

    def kind(self, path: str) -> str | None:
        if not self._kernel_resolves(path):
            return super().kind(path)
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            # a link loop: realpath() stops at the looping link, which then "exists"
            return super().kind(path) if exc.errno == errno.ELOOP else None
        if stat.S_ISDIR(mode):
            return "dir"
        return "file" if stat.S_ISREG(mode) else "other"

    def realpath(self, path: str) -> str:
        if not self._slash:
            return super().realpath(path)
        if self._kernel_resolves(path) and hasattr(os, "O_PATH"):
            # What the kernel opened, by name (O_PATH opens without reading or side effects);
            # a missing component keeps its unresolved tail, as os.path.realpath does.
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return os.path.realpath(path)
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            finally:
                os.close(fd)
            if target.startswith("/") and not target.endswith(" (deleted)"):
                return target
        return os.path.realpath(path)

    def run(self, argv: Sequence[str], timeout: float) -> bytes:
        if not self.allow_commands:
            raise CommandUnavailable(f"{argv[0]}: commands are not run against root {self.root}")
        exe = shutil.which(argv[0], path=COMMAND_PATH)
        if exe is None:
            raise CommandUnavailable(f"{argv[0]}: not installed")
        try:
            proc = subprocess.run(
                [exe, *argv[1:]],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                env={"PATH": COMMAND_PATH, "LC_ALL": "C"},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"{argv[0]}: no answer within {timeout:g} s") from None
        except OSError as exc:
            raise CommandUnavailable(f"{argv[0]}: {exc.strerror}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = err[-1] if err else f"exit status {proc.returncode}"
            raise CommandFailed(f"{argv[0]}: {detail[:200]}")
        return proc.stdout


    def probe(self, name: str, func: Callable[[], bytes]) -> bytes:
        if not self.allow_commands:
            raise CommandUnavailable(f"{name}: probes of this machine are not run against root "
                                     f"{self.root}")
        return func()


