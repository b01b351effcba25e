"""Signing key files of the operator: ed25519 key pairs made and loaded through securesystemslib.

A key pair is two files: `NAME.key`, the private key as PKCS#8 PEM (encrypted with the passphrase when one is given),
mode 0600 from the moment it exists (written to a temp file that `mkstemp` creates 0600, then linked to its name, so
neither a crash nor the umask ever leaves a readable or half-written key, and an existing key is never overwritten;
where the file system has no hard links, created with O_EXCL and mode 0600 instead);
and `NAME.pub.json`, the securesystemslib public key with its keyid (`{"keyid": ..., "keytype": "ed25519",
"scheme": "ed25519", "keyval": {"public": ...}}`), which is what `trust init` and `trust add-key` read.

A passphrase comes from a file (`--passphrase-file`, its trailing newline dropped) or from
`$EDGE_FLEET_KEY_PASSPHRASE`, never from a flag (it would show in `ps`). Every failure is a `KeyFileError` naming the
file; cryptography's and securesystemslib's exceptions do not leave this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from agent.fleet.errors import KeyFileError, UsageError
from agent.fsutil import fsync_dir, write_atomic

PASSPHRASE_ENV = "EDGE_FLEET_KEY_PASSPHRASE"
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub.json"
KEY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
MAX_KEY_FILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class KeyPair:
    """The two files of a new key pair and its keyid."""

    private: Path
    public: Path
    keyid: str
    encrypted: bool


def read_passphrase(passphrase_file: Path | None, environ: Mapping[str, str]) -> bytes | None:
    """The passphrase from `passphrase_file` (trailing newline dropped), else $EDGE_FLEET_KEY_PASSPHRASE, else None."""
    if passphrase_file is None:
        value = environ.get(PASSPHRASE_ENV)
        return value.encode() if value else None
    try:
        data = passphrase_file.read_bytes()
    except OSError as problem:
        raise KeyFileError(
            f"cannot read the passphrase file {passphrase_file}: {problem.strerror or problem}"
        ) from None
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if not data:
        raise KeyFileError(f"the passphrase file {passphrase_file} is empty")
    return data


def new_key_pair(name: str, out_dir: Path, passphrase: bytes | None = None) -> KeyPair:
    """Makes an ed25519 key pair as `out_dir/NAME.key` (0600) and `out_dir/NAME.pub.json`; never overwrites."""
    if not KEY_NAME_PATTERN.match(name):
        raise UsageError(f"key name {name!r}: 1-64 letters, digits, '.', '_' or '-', not starting with '.'")
    private, public = out_dir / f"{name}{PRIVATE_SUFFIX}", out_dir / f"{name}{PUBLIC_SUFFIX}"
    for path in (private, public):
        if path.exists():
            raise KeyFileError(f"{path} already exists: a key is never overwritten")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as problem:
        raise KeyFileError(f"cannot create {out_dir}: {problem.strerror or problem}") from None
    key = Ed25519PrivateKey.generate()
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    signer = CryptoSigner(key)
    try:
        _create_private(private, pem)
        write_atomic(public, public_key_json(signer.public_key), mode=0o644)
    except OSError as problem:
        raise KeyFileError(f"cannot write the key pair in {out_dir}: {problem.strerror or problem}") from None
    return KeyPair(private, public, signer.public_key.keyid, bool(passphrase))


def _create_private(path: Path, data: bytes) -> None:
    """Writes a new file of mode 0600 under `path` whole or not at all; fails if `path` exists."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # unlike a rename, refuses to replace an existing key
        except FileExistsError:
            raise
        except OSError:  # no hard links (a FAT or exFAT stick): create it exclusively, 0600 from the start
            _create_exclusive(path, data)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists: a key is never overwritten") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def _create_exclusive(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink()
        raise


def public_key_json(key: Key) -> bytes:
    """The public key file's content: the securesystemslib key dict with its keyid."""
    return (json.dumps({"keyid": key.keyid, **key.to_dict()}, indent=2, sort_keys=True) + "\n").encode()


def load_public_key(path: Path) -> SSlibKey:
    """Reads a `NAME.pub.json` (an ed25519 key whose keyid is the one securesystemslib computes)."""
    data = _read(path)
    try:
        document = json.loads(data)
        keyid = document.pop("keyid")
        key = Key.from_dict(keyid, document)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KeyFileError(
            f"{path} is not a public key file (NAME.pub.json from `edge-fleet keys new`)"
        ) from None
    if not isinstance(key, SSlibKey) or key.keytype != "ed25519" or key.scheme != "ed25519":
        raise KeyFileError(f"{path}: only ed25519 keys are used, this one is {key.keytype}/{key.scheme}")
    try:
        expected = SSlibKey.from_crypto(
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
        )
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(f"{path}: the ed25519 public key value is malformed") from None
    if expected.keyid != key.keyid or expected.keyval != key.keyval:
        raise KeyFileError(f"{path}: the keyid does not belong to the key (the file was altered)")
    return key


def load_signer(path: Path, passphrase: bytes | None) -> CryptoSigner:
    """A securesystemslib signer from a `NAME.key` (decrypted with `passphrase` when the file is encrypted)."""
    data = _read(path)
    encrypted = _ENCRYPTED_PEM in data
    if encrypted and passphrase is None:
        raise KeyFileError(
            f"{path} is encrypted: give its passphrase with --passphrase-file or ${PASSPHRASE_ENV}"
        )
    try:
        private = load_pem_private_key(data, passphrase if encrypted else None)
    except ValueError:
        if encrypted:
            raise KeyFileError(f"wrong passphrase for {path}") from None
        raise KeyFileError(f"{path} is not a PEM private key (NAME.key from `edge-fleet keys new`)") from None
    except TypeError:
        raise KeyFileError(f"{path} is not a PEM private key (NAME.key from `edge-fleet keys new`)") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: only ed25519 keys are used")
    return CryptoSigner(private)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as problem:
        raise KeyFileError(f"cannot read key file {path}: {problem.strerror or problem}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is too large to be a key file")
    return data


__all__ = [
    "PASSPHRASE_ENV",
    "KeyPair",
    "load_public_key",
    "load_signer",
    "new_key_pair",
    "public_key_json",
    "read_passphrase",
]
