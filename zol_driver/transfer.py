"""ZFS streams between two ZfsClients through the Cinder host (storage layer).

``zfs send`` runs on the source SAN, ``zfs receive`` on the destination (the same SAN with two
parents, or two SANs): ssh.pipe() carries the stream over the driver's own SSH connections, so
the SAN keys stay restricted to the wrapper and the SANs never need to reach each other.

Every receive is resumable (``zfs receive -s``): when a stream breaks (dropped connection,
killed sender, deadline), the receiver keeps a ``receive_resume_token`` and send() continues
with ``zfs send -t TOKEN`` up to ``resume_attempts`` times.  When it cannot continue, it aborts
the partial receive (``zfs receive -A``): nothing half-received is left on the destination.
Used by migration (issue 11, driver.migrate_volume) and replication (issue 12).
"""
from __future__ import annotations

import logging
import time

from zol_driver import exception
from zol_driver.ssh import PipeResult, pipe
from zol_driver.zfs import ZfsClient

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 6 * 3600.0
RESUME_ATTEMPTS = 3


class TransferFailed(exception.CommandFailed):
    message = ("zfs send %(snap)s -> %(dst)s failed%(aborted)s: %(stderr)s")

# receiver errors that a resumed stream meets again (OpenZFS 2.1 wording): give up at once
NOT_RESUMABLE = ("quota exceeded", "out of space")


def send(src_zfs: ZfsClient, snap: str, dst_zfs: ZfsClient, dst_ds: str,
         base: str | None = None, timeout: float = DEFAULT_TIMEOUT, progress=None,
         resume_attempts: int = RESUME_ATTEMPTS) -> PipeResult:
    """Send SNAP (full, or incremental from the older snapshot BASE of the same volume) from
    src_zfs into dst_ds on dst_zfs.

    Full: ``zfs receive -s -u DS`` (DS must not exist); incremental: ``-s -u -F`` (DS rolls
    back to its latest snapshot, which must be BASE's twin).  Returns the bytes and seconds of
    all attempts together; raises TransferFailed after aborting the partial receive.
    `timeout` bounds the whole transfer, resumes included.
    """
    force = base is not None
    src_argv = src_zfs.send_argv(snap, base)
    dst_argv = dst_zfs.receive_argv(dst_ds, force=force)
    t0 = time.monotonic()
    deadline = t0 + float(timeout)
    moved = 0
    kind = f"incremental from {base}" if base else "full"
    LOG.info("Sending %s (%s) from %s to %s on %s", snap, kind, src_zfs.executor.host, dst_ds,
             dst_zfs.executor.host)
    last: exception.CommandFailed | None = None
    for attempt in range(resume_attempts + 1):
        try:
            res = pipe(src_zfs.executor, src_argv, dst_zfs.executor, dst_argv,
                       timeout=max(deadline - time.monotonic(), 1.0),
                       progress=None if progress is None
                       else (lambda n, base_n=moved: progress(base_n + n)))
        except exception.CommandFailed as exc:
            last = exc
            moved += int(exc.kwargs.get("moved", 0) or 0)
        else:
            moved += res.bytes
            total = PipeResult(moved, time.monotonic() - t0)
            LOG.info("Sent %s to %s on %s: %.1f MiB in %.1f s (%.1f MiB/s)%s", snap, dst_ds,
                     dst_zfs.executor.host, moved / 1048576, total.seconds, total.mib_per_s,
                     f" after {attempt} resume(s)" if attempt else "")
            return total
        if attempt >= resume_attempts or time.monotonic() >= deadline:
            break
        if any(m in (last.stderr or "") for m in NOT_RESUMABLE):
            LOG.info("The receive into %s failed for lack of space: resuming cannot help",
                     dst_ds)
            break
        token = _token(dst_zfs, dst_ds)
        if token is None:
            LOG.info("The receive into %s left no resumable state: not resuming", dst_ds)
            break
        LOG.info("Resuming the stream into %s with its receive_resume_token (attempt %d of "
                 "%d)", dst_ds, attempt + 1, resume_attempts)
        src_argv = src_zfs.send_resume_argv(token)
    assert last is not None
    aborted = _abort(dst_zfs, dst_ds)
    raise TransferFailed(command=last.command, exit_code=last.exit_code, stderr=last.stderr,
                         snap=snap, dst=f"{dst_ds} on {dst_zfs.executor.host}",
                         aborted=" (the partial receive was aborted)" if aborted else "",
                         moved=moved)


def _token(dst_zfs: ZfsClient, ds: str) -> str | None:
    try:
        return dst_zfs.resume_token(ds)
    except (exception.ZolException, OSError) as exc:
        LOG.info("Cannot read the receive_resume_token of %s: %s", ds, exc)
        return None


def _abort(dst_zfs: ZfsClient, ds: str) -> bool:
    """Free a partial receive; a failure here is logged, never hides the transfer's error."""
    try:
        return dst_zfs.abort_receive(ds)
    except (exception.ZolException, OSError) as exc:
        LOG.error("Could not abort the partial receive of %s on %s (free it with "
                  "`zfs receive -A %s`): %s", ds, dst_zfs.executor.host, ds, exc)
        return False
