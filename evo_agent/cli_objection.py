"""``evo-agent opt-out`` and ``opt-in``: the owner's objection, from the command line (root).

opt-out records the decision (``state_dir/opted-out``), deletes every waiting report at once, and
tells the registry (``evo_agent.delivery.objection``): here and now if it can be reached, else the
message waits and the daemon sends it before anything else.  opt-in removes the decision and sends
the withdrawal the same way; the next scheduled report follows it.  The sending runs in a child
process as the state directory's owner (the daemon's user), like ``send --now``, so root leaves no
file the daemon cannot use; the running daemon is then told to reload (SIGHUP).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any, TextIO

from evo_agent.delivery import objection
from evo_agent.errors import ConfigError, DeliveryError, NotPermitted

if TYPE_CHECKING:
    from evo_agent.config import Config


def add_verbs(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add opt-out and opt-in to ``evo-agent``'s sub-parsers."""
    o = sub.add_parser("opt-out", parents=[common],
                       help="object: stop collecting, delete what waits, tell the registry "
                            "(needs root)")
    o.set_defaults(handler=cmd_opt_out)
    i = sub.add_parser("opt-in", parents=[common],
                       help="withdraw the objection and report again (needs root)")
    i.set_defaults(handler=cmd_opt_in)


def cmd_opt_out(args: argparse.Namespace, out: TextIO) -> int:
    """Object to reporting."""
    return _decide(args, out, objects=True)


def cmd_opt_in(args: argparse.Namespace, out: TextIO) -> int:
    """Withdraw the objection."""
    return _decide(args, out, objects=False)


def _decide(args: argparse.Namespace, out: TextIO, *, objects: bool) -> int:
    from evo_agent.cli_delivery import _audit, _config
    from evo_agent.delivery.cycle import vpnid_of
    from evo_agent.delivery.outbox import ensure_dir, writer_lock

    verb = "opt-out" if objects else "opt-in"
    _audit(verb)
    if os.geteuid() != 0:
        raise NotPermitted(f"evo-agent {verb}: needs root (it changes the state directory); "
                           "use sudo")
    cfg = _config(args)
    if not objects and not cfg.enabled:
        raise ConfigError(cfg.sources[-1] if cfg.sources else None, "agent.enabled",
                          "is false: opting in needs it true (or removed) first")
    ensure_dir(cfg.state_dir)
    with writer_lock(cfg.state_dir):
        objection.decide(cfg.state_dir, objects)
        objection.prepare(cfg.state_dir, vpnid_of(cfg), objects=objects)
    result = _cycle_as_owner(cfg, getattr(args, "config", None))
    _reload_daemon(cfg)
    what = "objection" if objects else "withdrawal of the objection"
    if not objection.waiting(cfg.state_dir):
        print(f"{'opted out' if objects else 'opted in'}: the registry has the {what}",
              file=out)
        return 0
    raise DeliveryError(f"{'opted out' if objects else 'opted in'} here, but the registry has "
                        f"not the {what} yet ({result.get('error')}): it waits and goes first "
                        "when the registry can be reached")


def _cycle_as_owner(cfg: Config, config: str | None) -> dict[str, Any]:
    """Run a cycle that only sends what waits, as the state directory's owner."""
    from evo_agent.delivery.sources import child_argv, child_env, result_of

    st = cfg.state_dir.stat()
    argv = child_argv(sys.executable, config, "cycle")
    kwargs: dict[str, Any] = {}
    if st.st_uid != os.geteuid():
        kwargs = {"user": st.st_uid, "group": st.st_gid, "extra_groups": []}
    timeout = cfg.values["delivery"]["total_timeout"] * 4 + 60
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, cwd="/",
                              env=child_env(), **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": f"the sending process failed: {exc}"}
    return result_of(done.stdout, done.returncode, done.stderr)


def _reload_daemon(cfg: Config) -> None:
    """Tell a running daemon to read the decision (it stops or resumes collecting)."""
    from evo_agent.delivery import control

    with contextlib.suppress(control.NoDaemon, OSError, ValueError):
        status = control.request(str(cfg.values["agent"]["control_socket"]), {"op": "status"},
                                 2.0)
        pid = status.get("pid")
        if isinstance(pid, int) and pid > 1:
            os.kill(pid, signal.SIGHUP)
