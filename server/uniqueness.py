"""One gateway per service name per machine, for local runs.

Owns ``claim_instance_lock``. A second ``python -m server`` with the same ``SERVICE_NAME`` on
the same machine would fight the first for the port and confuse whoever runs them; it now
stops at once, naming the process that holds the name. The lock is an ``flock`` on a file in
the temp directory: the kernel drops it when its holder dies, so a lock file left by a crash
is detected as stale and taken over. ``SINGLE_INSTANCE=auto`` turns this off inside
containers (Docker, Kubernetes), where replicas are the point.
"""

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

from loguru import logger

from server.settings import Settings

__all__ = ["InstanceLockError", "claim_instance_lock"]


class InstanceLockError(Exception):
    """Another gateway with this service name runs on this machine."""


def _in_container() -> bool:
    return (
        "KUBERNETES_SERVICE_HOST" in os.environ
        or Path("/.dockerenv").exists()
        or Path("/run/.containerenv").exists()
    )


def claim_instance_lock(settings: Settings) -> IO[str] | None:
    """Take the service-name lock (keep the returned file open while serving)."""
    mode = settings.single_instance
    if mode == "off" or (mode == "auto" and _in_container()):
        return None
    path = Path(tempfile.gettempdir()) / f"{settings.service_name}.lock"
    handle = path.open("a+")
    handle.seek(0)
    previous = handle.read().strip()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise InstanceLockError(
            f"another gateway with SERVICE_NAME={settings.service_name} is already running on "
            f"this machine (pid {previous or '?'}, lock {path}); stop it, or set another "
            "SERVICE_NAME, or SINGLE_INSTANCE=off"
        ) from None
    if previous and previous != str(os.getpid()):
        logger.info("stale lock {} of pid {} (no longer running) cleared", path, previous)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
