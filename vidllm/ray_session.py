"""One home for starting or joining Ray (ray is imported inside the functions: vidllm.models and
inference import without Ray).

- No `RAY_ADDRESS`: a private local instance (`address="local"`), never a cluster recorded on this
  machine by an earlier `ray start` (plain `ray.init()` would join it, even a dead one).
- `RAY_ADDRESS` set: connect to that cluster; an unreachable or refusing cluster is a one-line
  `VidLLMError`, within seconds (the GCS port is probed before `ray.init`).
- Only non-secret settings go to the workers' runtime_env (Ray writes runtime_envs into its logs in
  clear text): S3 endpoint, region, profile name and offline switches; the cluster uses its own
  credentials (instance role, ~/.aws on the nodes, or the forwarded AWS_PROFILE).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

from vidllm.errors import VidLLMError

# The only variables forwarded to Ray workers. Never credentials.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
)
_SECRET_NAME = re.compile(r"SECRET|TOKEN|KEY|PASSWORD|CREDENTIAL", re.IGNORECASE)

PROBE_TIMEOUT_S = 5.0

_AUTH_HINT = ("clusters started by `ray start` with this Ray (2.60) use token auth: set RAY_AUTH_MODE=token "
              "and the cluster's token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token)")


def forwarded_env() -> dict[str, str]:
    """The safe settings (see FORWARDED_ENV) present in os.environ; secrets never."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ and not _SECRET_NAME.search(k)}


def absolute_local(path: str | Path) -> str:
    """A relative local path made absolute (tasks on a cluster have another cwd); URLs unchanged."""
    text = str(path)
    if "://" in text:
        return text
    return str(Path(text).expanduser().absolute())


def cluster_has_gpus() -> bool:
    """Whether the connected Ray cluster has GPUs (its resources decide, not this driver's torch)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a `host:port` or `ray://host:port` address; None for `auto` and the like."""
    text = address.strip()
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in ("ray", "gcs"):
            return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _fail(address: str, reason: str) -> VidLLMError:
    first = (reason.strip().splitlines() or [""])[0]
    return VidLLMError(f"cannot connect to the Ray cluster at RAY_ADDRESS={address}: {first}; {_AUTH_HINT}")


def check_reachable(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise a one-line VidLLMError unless the GCS at `address` accepts a TCP connection in `timeout` s."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as e:
        raise _fail(address, f"{target[0]}:{target[1]} is not reachable ({e.strerror or e})") from None


def init_ray(num_cpus: int | None = None, **kw: Any) -> bool:
    """Start a private local Ray, or connect to RAY_ADDRESS; returns True if this call initialised Ray.

    `num_cpus` applies to the local instance only; `kw` goes to `ray.init` (a `runtime_env` given here
    gets the forwarded env added to its env_vars when connecting to a cluster).
    """
    import ray

    if ray.is_initialized():
        return False
    kw.setdefault("logging_level", "WARNING")
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, **kw)
        return True
    check_reachable(address)
    runtime_env = dict(kw.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {**dict(runtime_env.get("env_vars") or {}), **forwarded_env()}
    try:
        ray.init(address=address, runtime_env=runtime_env, **kw)
    except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError...: all mean "not connected"
        if ray.is_initialized():
            ray.shutdown()
        raise _fail(address, f"{type(e).__name__}: {e}") from None
    return True
