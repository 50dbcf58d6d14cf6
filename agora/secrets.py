"""Key material from configuration, or generated once into the state folder locally.

In production every key comes from the environment (a Kubernetes Secret). In the
dev and test profiles a missing key is generated on first use and kept under
`<state>/secrets/`, so a local stack works without set-up and keeps its keys
across restarts.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from agora.config import Settings


def decode_key(text: str, *, size: int, env_name: str, error: type[Exception]) -> bytes:
    """Base64 text of exactly `size` bytes, or `error` naming the variable."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise error(f"{env_name} must be base64") from None
    if len(key) != size:
        raise error(f"{env_name} must decode to {size} bytes, not {len(key)}")
    return key


def configured_or_local_key(
    settings: Settings,
    configured: str,
    *,
    env_name: str,
    filename: str,
    size: int,
    error: type[Exception],
) -> bytes:
    """The configured key; outside prod, a generated one kept in <state>/secrets/<filename>."""
    if configured:
        return decode_key(configured, size=size, env_name=env_name, error=error)
    if settings.profile == "prod":
        raise error(f"{env_name} is required in the prod profile")
    path = settings.state_dir / "secrets" / filename
    create_once(path, size)
    return decode_key(path.read_text(), size=size, env_name=str(path), error=error)


def _private_file(path: Path, data: bytes) -> Path:
    """A new file beside `path` holding `data`, readable by its owner only from the
    moment it exists (a file written, then chmod-ed, is the umask's 0644 meanwhile:
    open then, it stays readable after the chmod)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return tmp


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path`, mode 0600, whole or not at all (a private temporary file
    renamed into place)."""
    os.replace(_private_file(path, data), path)


def create_once(path: Path, size: int) -> None:
    """Write `size` random bytes (base64) to `path` unless it exists.

    Written to a private temporary file and hard-linked into place: the link is
    atomic and fails if another process got there first, so concurrent starts
    agree on one key and nobody reads a half-written file.
    """
    if path.exists():
        return
    tmp = _private_file(
        path, (base64.b64encode(secrets.token_bytes(size)).decode() + "\n").encode()
    )
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
