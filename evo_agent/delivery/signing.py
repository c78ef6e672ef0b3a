"""The device's Ed25519 key: created once, kept in the state directory, signs every report body.

The registry verifies each report with the public key enrolled for the device's VPNID
(docs/protocol.md), so a report cannot be forged for another device nor altered on the way, also
over plain HTTP inside the VPN.  Format: ``state_dir/device.key``, PEM PKCS#8, unencrypted, mode
0600 (the device boots unattended: there is nobody to type a passphrase).  The key is created at
first start, or by the manufacturing line before that.  It is written with O_EXCL under a temp name
and renamed, so two first starts racing, or a power cut, never leave a half key or two keys.

python3-cryptography is imported here only, and only by the short-lived process that sends (see
``evo_agent.delivery.daemon``): the resident daemon never loads it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from evo_agent.delivery.outbox import adopt, ensure_dir, fsync_dir
from evo_agent.errors import DeviceKeyMissing, StateError

KEY_NAME = "device.key"


def key_path(state_dir: Path) -> Path:
    """Return where the device key lives."""
    return state_dir / KEY_NAME


def load_or_create(state_dir: Path) -> Ed25519PrivateKey:
    """Return the device key, creating it (mode 0600) when there is none."""
    path = key_path(state_dir)
    try:
        return load(path)
    except FileNotFoundError:
        pass
    ensure_dir(state_dir)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(f".tmp-{KEY_NAME}-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            adopt(fd, state_dir)  # made by root at manufacturing: the daemon's user must read it
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails if another process created the key meanwhile: theirs wins, ours goes.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load(path)
        fsync_dir(state_dir)
    except OSError as exc:
        raise StateError(f"{path}: cannot be created ({exc.strerror})") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return key


def used_before(state_dir: Path) -> str | None:
    """Return how this unit shows that it has used a key (enrolled, numbered or sent a report),
    or None for a unit that never did."""
    for name, what in (("enrolment.json", "was enrolled"), ("sent/index.jsonl", "sent reports"),
                       ("sequence", "numbered reports")):
        if (state_dir / name).exists():
            return f"{what} ({state_dir / name})"
    return None


def missing_key_message(state_dir: Path, used: str) -> str:
    """Return what to say when the key of a unit that used one is gone."""
    return (f"{key_path(state_dir)} is missing, but this unit {used}: the registry knows its "
            "enrolled key only, so a new key would be refused for ever; the unit must be "
            "re-enrolled (restore the key from a backup, or evo-agent manufacture --force)")


def load_for_sending(state_dir: Path) -> Ed25519PrivateKey:
    """Return the device key; make one only on a unit that never used a key.

    A key made after enrolment can never be verified (every report answered 401), so a missing
    key on a unit that was enrolled or has sent reports is an error that says to re-enrol.
    """
    try:
        return load(key_path(state_dir))
    except FileNotFoundError:
        used = used_before(state_dir)
        if used is not None:
            raise DeviceKeyMissing(missing_key_message(state_dir, used)) from None
    return load_or_create(state_dir)


def load(path: Path) -> Ed25519PrivateKey:
    """Read the device key; raises FileNotFoundError when absent, StateError when unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(f"{path}: cannot be read ({exc.strerror}); verbs that send need root") \
            from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise StateError(f"{path}: not a PEM PKCS#8 key ({exc}); the device must be re-enrolled "
                         "with a new key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StateError(f"{path}: not an Ed25519 key")
    return key


def mode_problem(path: Path) -> str | None:
    """Return what is wrong with the key file's permissions, or None."""
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, should be 0600 (chmod 600 {path})"
    return None


def public_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Return the public key as base64 of its 32 raw bytes (the enrolment format)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def sign(key: Ed25519PrivateKey, body: bytes) -> str:
    """Return the X-Evo-Signature value for a request body (the gzip bytes as sent)."""
    return base64.b64encode(key.sign(body)).decode("ascii")
