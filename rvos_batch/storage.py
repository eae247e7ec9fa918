"""Paths that are local folders or ``s3://`` URLs, through fsspec.

Credentials and endpoint come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...) or from a ``--storage-options`` JSON object passed
to s3fs. Nothing here ever logs or returns a credential: use :func:`redact` before recording options.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from rvos_batch.errors import RvosBatchError

_SECRET_WORDS = ("secret", "token", "password", "key", "credential", "session")


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """Parse the ``--storage-options`` JSON object (None or empty gives {})."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RvosBatchError(f"--storage-options is not valid JSON: {e.msg} at position {e.pos}") from None
    if not isinstance(value, dict):
        raise RvosBatchError(f"--storage-options must be a JSON object, got {type(value).__name__}")
    return value


def _with_env_endpoint(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
            options["endpoint_url"] = endpoint
    return options


def get_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or URL; the path is what that filesystem expects."""
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    options = _with_env_endpoint(protocol, storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and URLs alike."""
    return posixpath.join(base.rstrip("/") if base not in ("/", "") else base, *parts)


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` so a reader sees the old object or the whole new one, never a part.

    Local: write a temporary sibling, fsync, rename. Object stores: a single PUT is already atomic.
    """
    if is_local(fs):
        parent = posixpath.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, value: Any) -> None:
    write_bytes_atomic(fs, path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def redact(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of storage options with every credential-like value replaced by '***'."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out[k] = redact(v)
        elif any(w in k.lower() for w in _SECRET_WORDS):
            out[k] = "***"
        else:
            out[k] = v
    return out
