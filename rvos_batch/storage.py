"""Paths that are local folders or ``s3://`` URLs, through fsspec.

Credentials and endpoint come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...) or from a ``--storage-options`` JSON object passed
to s3fs (inline, or ``@FILE`` to read it from a file, which keeps keys off command lines, ``ps`` and Ray's
job records). Nothing here ever logs or returns a credential: use :func:`redact` before recording options.
botocore logs every request's headers at DEBUG, session tokens included, so its loggers are held at INFO
even when ``rvos-batch -v`` turns on debug logging (set them lower yourself to debug S3 itself).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from rvos_batch.errors import RvosBatchError

_SECRET_WORDS = ("secret", "token", "password", "key", "credential", "session")
_URL_USERINFO = re.compile(r"(?<=://)[^@\s]+@")  # user:password@ (a password may hold '/')

for _name in ("botocore", "aiobotocore"):  # DEBUG records carry request headers (X-Amz-Security-Token)
    if logging.getLogger(_name).level < logging.INFO:
        logging.getLogger(_name).setLevel(logging.INFO)


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """Parse the ``--storage-options`` JSON object, or ``@FILE`` holding one (None or empty gives {}).

    Error messages never quote the text: it may hold keys.
    """
    if not text:
        return {}
    where = "--storage-options"
    if text.startswith("@"):
        where = f"--storage-options file {text[1:]}"
        try:
            with open(os.path.expanduser(text[1:]), encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise RvosBatchError(f"{where}: cannot read it ({e.strerror or type(e).__name__})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RvosBatchError(f"{where} is not valid JSON: {e.msg} at position {e.pos}") from None
    if not isinstance(value, dict):
        raise RvosBatchError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _with_env_endpoint(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
            options["endpoint_url"] = endpoint
        # botocore keeps 10 connections by default: too few for parallel_map's requests in flight
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("max_pool_connections", 2 * REMOTE_IO_WORKERS)
        options["config_kwargs"] = config
    return options


def get_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or URL; the path is what that filesystem expects."""
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    options = _with_env_endpoint(protocol, storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


_T = TypeVar("_T")
_R = TypeVar("_R")

# Requests kept in flight by parallel_map: an object store answers each GET in tens of milliseconds however many
# are open, so scans of many small objects (corpus footers, commit markers) are latency-bound, not bandwidth-bound.
REMOTE_IO_WORKERS = 32
LOCAL_IO_WORKERS = 4


def parallel_map(fs: fsspec.AbstractFileSystem, fn: Callable[[_T], _R], items: Iterable[_T],
                 workers: int | None = None) -> list[_R]:
    """``[fn(x) for x in items]``, in order, with up to ``workers`` calls at once (default: REMOTE_IO_WORKERS on an
    object store, LOCAL_IO_WORKERS on a local disk). The first exception, in item order, is raised."""
    todo = list(items)
    n = min(len(todo), workers or (LOCAL_IO_WORKERS if is_local(fs) else REMOTE_IO_WORKERS))
    if n <= 1:
        return [fn(x) for x in todo]
    with ThreadPoolExecutor(n, thread_name_prefix="rvos-io") as pool:
        return list(pool.map(fn, todo))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and URLs alike."""
    return posixpath.join(base.rstrip("/") if base not in ("/", "") else base, *parts)


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes, tmp_name: str | None = None) -> None:
    """Write ``data`` so a reader sees the old object or the whole new one, never a part.

    Local: write a temporary sibling (``tmp_name``, default ``.tmp-<uuid>-<name>``), fsync, rename; the temporary
    is removed if anything fails. Object stores: a single PUT is already atomic.
    """
    if is_local(fs):
        parent = posixpath.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, tmp_name or f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, data)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, value: Any) -> None:
    write_bytes_atomic(fs, path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def redact(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of storage options with every credential-like value replaced by '***'.

    Keys naming a secret (key, secret, token, password, credential, session) lose their value, nested dicts
    and lists are walked, and user:password@ in URL-like strings (an endpoint with credentials) is masked.
    """
    return {k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) else _redact_value(v)
            for k, v in options.items()}


def _redact_value(value: Any) -> Any:
    if isinstance(value, dict):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    if isinstance(value, str):
        return _URL_USERINFO.sub("***@", value)
    return value
