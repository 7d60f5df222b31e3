"""One exception hierarchy for the image builder.

Every error carries a message template filled from keyword arguments, so the CLI can print one
actionable line and the pipeline can say which stage failed and why without parsing strings.
"""
from __future__ import annotations


class ImageBuilderError(Exception):
    """Base class: ``msg_fmt`` is filled with the keyword arguments given at raise time."""

    msg_fmt = "An unknown image builder error occurred."

    def __init__(self, message: str | None = None, **kwargs: object) -> None:
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError, ValueError):
                # A wrong template must not hide the original failure.
                message = "%s %r" % (self.msg_fmt, kwargs)
        self.message = message
        super().__init__(message)


class ConfigError(ImageBuilderError):
    msg_fmt = "Invalid configuration: %(reason)s"


class CommandError(ImageBuilderError):
    msg_fmt = "Command %(cmd)s failed with exit code %(rc)s: %(stderr)s"


class CommandTimeout(ImageBuilderError):
    msg_fmt = "Command %(cmd)s did not finish within %(timeout)s s"


class DiskError(ImageBuilderError):
    msg_fmt = "Disk image error: %(reason)s"


class InstallError(ImageBuilderError):
    msg_fmt = "Install failed: %(reason)s"


class MirrorIncomplete(InstallError):
    msg_fmt = ("The Debian installer stopped at its mirror check: %(mirror)s does not serve "
               "installer component %(download)s (%(detail)s). Use a complete mirror "
               "(one that carries main/debian-installer) or the chroot backend.")


class InstallTimeout(InstallError):
    msg_fmt = "The installer did not finish within %(timeout)s s; last console line: %(last)s"


class VerifyError(ImageBuilderError):
    msg_fmt = "Boot verification failed: %(reason)s"


class GlanceError(ImageBuilderError):
    msg_fmt = "Glance: %(reason)s"


class StageFailed(ImageBuilderError):
    """Raised by the pipeline around any failure so the user learns which stage broke."""

    msg_fmt = "Stage %(stage)s failed after %(seconds).1f s: %(reason)s"

    def __init__(self, stage: str, seconds: float, cause: BaseException) -> None:
        self.stage = stage
        self.cause = cause
        super().__init__(stage=stage, seconds=seconds, reason=_reason(cause))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ImageBuilderError):
        return exc.message
    return "%s: %s" % (type(exc).__name__, exc)
