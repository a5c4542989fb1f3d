"""Paths as URIs: a local path or `s3://bucket/prefix`, behind one small API.

S3 goes through `pyarrow.fs.S3FileSystem`. The endpoint and credentials come from the
standard AWS environment (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, or ~/.aws), never
from code.

Writes are atomic: locally a temporary file in the same directory is renamed over the
target; on S3 the object is uploaded only once it is complete (a PUT is atomic), so a
reader never sees half an object.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from vidllm.artifacts.files import atomic_file
from vidllm.errors import VidLLMError

S3_SCHEME = "s3://"

_F = TypeVar("_F", bound=Callable)


class StorageError(VidLLMError, OSError):
    """An S3 request failed for a reason the user can fix (credentials, endpoint, bucket)."""


# pyarrow's "AWS Error <CODE>" and botocore's error codes → what to check. Never the secret itself.
_S3_PROBLEMS = (
    (("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "INVALID_ACCESS_KEY_ID",
      "SIGNATURE_DOES_NOT_MATCH", "Forbidden"),
     "access denied: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and "
     "the bucket's permissions"),
    (("NETWORK_CONNECTION", "EndpointConnectionError", "Could not connect", "CONNECT_ERROR"),
     "cannot reach the S3 endpoint: check AWS_ENDPOINT_URL"),
    (("NO_SUCH_BUCKET", "NoSuchBucket"), "the bucket does not exist"),
    (("NoCredentialsError", "Unable to locate credentials", "MISSING_AUTHENTICATION_TOKEN"),
     "no S3 credentials found: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"),
)
_S3_RESOURCE = re.compile(r"key '([^']*)' in bucket '([^']*)'|bucket '([^']*)'")


def describe_s3_error(exc: BaseException, uri: str | Path | None = None) -> str | None:
    """One line for an S3 failure (pyarrow or botocore) the user can act on; None if `exc` is not one."""
    text = f"{type(exc).__name__}: {exc}"
    problem = next((what for codes, what in _S3_PROBLEMS if any(code in text for code in codes)), None)
    if problem is None:
        if "AWS Error" not in text:
            return None
        code = re.search(r"AWS Error (\w+)", text)
        problem = f"S3 request failed ({code.group(1) if code else 'unknown error'})"
    where = str(uri) if uri is not None else None
    if where is None and (m := _S3_RESOURCE.search(text)):
        where = f"s3://{m.group(2)}/{m.group(1)}" if m.group(2) else f"s3://{m.group(3)}"
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS default"
    return f"{where or 's3'}: {problem} (endpoint {endpoint})"


def _s3_errors(func: _F) -> _F:
    """Raise StorageError (one line) instead of pyarrow's OSError for S3 failures of `func(uri, ...)`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StorageError:
            raise
        except OSError as exc:
            uri = next((a for a in args if is_s3(str(a))), None)
            message = describe_s3_error(exc, uri) if uri is not None else None
            if message is None:
                raise
            raise StorageError(message) from None

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class FileInfo:
    uri: str
    name: str
    size: int
    mtime_ns: int | None


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith(S3_SCHEME)


def join(uri: str | Path, *parts: str) -> str:
    """Join path segments onto a local path or an s3:// URI."""
    base = str(uri)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base).joinpath(*parts))


def basename(uri: str | Path) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the standard AWS environment variables."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    # Explicit keys when present (pyarrow would also find them, but then pickling the
    # filesystem into Ray workers loses them); otherwise the default AWS credential chain.
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    # Synchronous uploads: no Arrow thread keeps Python buffers alive past the write call.
    return pafs.S3FileSystem(background_writes=False, **kwargs)


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """URI → (pyarrow filesystem, path inside it)."""
    text = str(uri)
    if is_s3(text):
        return s3_filesystem(), text[len(S3_SCHEME):].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(text).absolute())


@_s3_errors
def exists(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@_s3_errors
def info(uri: str | Path) -> FileInfo | None:
    fs, path = resolve(uri)
    fi = fs.get_file_info(path)
    if fi.type == pafs.FileType.NotFound:
        return None
    return FileInfo(str(uri), fi.base_name, fi.size or 0, fi.mtime_ns)


@_s3_errors
def list_files(uri: str | Path, suffix: str = "", recursive: bool = False) -> list[FileInfo]:
    """Files directly under a folder/prefix (sorted by name); empty if it doesn't exist."""
    fs, path = resolve(uri)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    out = []
    for fi in fs.get_file_info(selector):
        if fi.type != pafs.FileType.File or not fi.base_name.endswith(suffix):
            continue
        rel = fi.path[len(path):].lstrip("/")
        out.append(FileInfo(join(uri, rel), rel, fi.size or 0, fi.mtime_ns))
    return sorted(out, key=lambda f: f.name)


@_s3_errors
def list_dirs(uri: str | Path) -> list[str]:
    """Names of the sub-folders (S3: common prefixes) directly under `uri`, sorted."""
    fs, path = resolve(uri)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    return sorted(fi.base_name for fi in fs.get_file_info(selector) if fi.type == pafs.FileType.Directory)


@_s3_errors
def read_bytes(uri: str | Path) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


@_s3_errors
def open_input(uri: str | Path) -> BinaryIO:
    """A readable binary stream (the caller closes it)."""
    fs, path = resolve(uri)
    return fs.open_input_stream(path)


@contextmanager
def atomic_output(uri: str | Path) -> Iterator[BinaryIO]:
    """Write a file that becomes visible at `uri` only if the block finishes without error."""
    text = str(uri)
    if not is_s3(text):
        with atomic_file(text) as f:
            yield f
        return
    # S3: spool locally, then one upload of the finished file (PUT/multipart complete is atomic).
    with tempfile.NamedTemporaryFile(prefix="vidllm-upload-", suffix=".tmp") as spool:
        yield spool  # type: ignore[misc]
        spool.flush()
        spool.seek(0)
        fs, path = resolve(text)
        with fs.open_output_stream(path) as out:
            shutil.copyfileobj(spool, out, length=8 << 20)


@_s3_errors
def write_bytes(uri: str | Path, data: bytes) -> None:
    with atomic_output(uri) as f:
        f.write(data)


@_s3_errors
def delete(uri: str | Path) -> None:
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def make_dirs(uri: str | Path) -> None:
    if not is_s3(uri):
        Path(str(uri)).mkdir(parents=True, exist_ok=True)


@_s3_errors
def download_tree(uri: str | Path, local_dir: str | Path) -> Path:
    """Copy every file under `uri` into `local_dir` (skipping files already there with the same size)."""
    local = Path(local_dir)
    for f in list_files(uri, recursive=True):
        dest = local / f.name
        if dest.exists() and dest.stat().st_size == f.size:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open_input(f.uri) as src, atomic_output(dest) as out:
            shutil.copyfileobj(src, out, length=8 << 20)
    return local


@_s3_errors
def upload_tree(local_dir: str | Path, uri: str | Path) -> None:
    """Copy a local folder to a local path or S3 prefix (used by tests and tools)."""
    root = Path(local_dir)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as src, atomic_output(join(uri, *path.relative_to(root).parts)) as out:
                shutil.copyfileobj(src, out, length=8 << 20)
