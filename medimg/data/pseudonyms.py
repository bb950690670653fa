"""Pseudonyms for the identifiers that decide a split (patients, studies, series, the
groups a user names): a keyed hash whose key stays with the data, so that someone with
the repository and its outputs, but not the data, cannot reverse one by hashing guesses.

The key is a file of 64 hex digits (`data.key_file`, relative to `data.raw_dir`),
created on first use. Keep it beside the data and out of git: with it, a pseudonym in any
output can be traced back to its patient by whoever holds the data."""

import hashlib
import hmac
import secrets
from pathlib import Path

from medimg.errors import DatasetError
from medimg.io import atomic_path

KEY_BYTES = 32
DIGITS = 16  # 64 bits of the hash: no collision expected below billions of ids


def read_key(path: Path, create: bool = True) -> bytes:
    """The key in `path`; with `create`, a new random one written there when it is absent."""
    if path.is_file():
        try:
            key = bytes.fromhex(path.read_text(encoding="ascii").strip())
        except (UnicodeDecodeError, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise DatasetError(f"data.key_file: {path} is not a pseudonym key "
                               f"({2 * KEY_BYTES} hex digits)")
        return key
    if not create:
        raise DatasetError(f"data.key_file: {path} does not exist")
    key = secrets.token_bytes(KEY_BYTES)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(key.hex() + "\n", encoding="ascii")
            tmp.chmod(0o600)
    except OSError as err:
        raise DatasetError(f"data.key_file: cannot create {path} ({err.strerror}); create it "
                           f"with: python -c \"import secrets; print(secrets.token_hex(32))\" "
                           f"> {path}") from err
    print(f"created the pseudonym key {path}: keep it with the data, never in git (where DVC "
          f"tracks the data folder, `dvc add` it again so that the key travels with it)")
    return key


class Pseudonyms:
    """`kind-<16 hex digits>` for an identifier; the same id always gets the same one. The
    key is read (or created) at the first pseudonym asked for, so data that needs none
    gets no key file."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._key: bytes | None = None

    def __call__(self, kind: str, value: str) -> str:
        if self._key is None:
            self._key = read_key(self.key_file)
        message = f"{kind}\0{value}".encode()
        return f"{kind}-{hmac.new(self._key, message, hashlib.sha256).hexdigest()[:DIGITS]}"
