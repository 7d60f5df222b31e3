"""One exception hierarchy for zol_driver.

Every error carries a message template filled from keyword arguments, so the text an operator
sees always names the object, the option or the command involved.  The Cinder glue
(driver.py) converts these into Cinder's exceptions at the layer boundary; the lower layers
never import Cinder.
"""
from __future__ import annotations

from typing import Any


class ZolException(Exception):
    """Base class: ``message`` is a %-template filled from the keyword arguments."""

    message = "An unknown zol_driver error occurred."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        template = message or self.message
        try:
            text = template % kwargs if kwargs else template
        except (KeyError, TypeError, ValueError):
            # A wrong template must never hide the original problem.
            text = f"{template} {kwargs!r}"
        self.msg = text
        super().__init__(text)

    def __str__(self) -> str:
        return self.msg


class ConfigError(ZolException):
    message = "Invalid configuration: option %(option)s: %(reason)s"


class InvalidName(ZolException):
    message = "Refusing invalid %(kind)s name %(name)r: %(reason)s"


class InvalidValue(ZolException):
    message = "Invalid %(kind)s %(value)r: %(reason)s"


# -- transport ----------------------------------------------------------------------------------

class TransportError(ZolException):
    message = "Cannot reach the ZFS SAN %(host)s: %(reason)s"


class HostKeyError(TransportError):
    message = ("SSH host key of %(host)s is not trusted: %(reason)s. Add the SAN's host key to "
               "the file named by zol_ssh_known_hosts_file (%(known_hosts)s), e.g. with "
               "`ssh-keyscan -p PORT HOST >> FILE` after checking its fingerprint")


class AuthenticationError(TransportError):
    message = ("SSH login to %(user)s@%(host)s with key %(key)s failed: %(reason)s. Check "
               "san_login and san_private_key, and the SAN's authorized_keys")


class CommandTimeout(TransportError):
    message = "Command %(command)s on %(host)s timed out after %(timeout).0f s"


class CommandFailed(ZolException):
    """A command ran and exited non-zero; the parsers below narrow it down by stderr."""

    message = "Command %(command)s failed with exit code %(exit_code)s: %(stderr)s"

    def __init__(self, message: str | None = None, *, command: str, exit_code: int,
                 stderr: str, stdout: str = "", **kwargs: Any) -> None:
        self.command = command
        self.exit_code = exit_code
        self.stderr = stderr
        self.stdout = stdout
        super().__init__(message, command=command, exit_code=exit_code,
                         stderr=stderr.strip(), **kwargs)


class WrapperDenied(CommandFailed):
    message = ("The SAN wrapper denied %(command)s (exit %(exit_code)s): %(stderr)s. The driver "
               "and wrappers/zol-ssh-wrapper must speak the same protocol "
               "(doc/san-protocol.md); check the wrapper version and its parents/iqn_prefix")


# -- ZFS -------------------------------------------------------------------------------------------

class ZfsError(CommandFailed):
    message = "zfs command %(command)s failed (exit %(exit_code)s): %(stderr)s"


class DatasetNotFound(ZfsError):
    message = "ZFS dataset does not exist: %(stderr)s"


class DatasetExists(ZfsError):
    message = "ZFS dataset already exists: %(stderr)s"


class DatasetBusy(ZfsError):
    message = "ZFS dataset is busy: %(stderr)s"


class DatasetHasClones(ZfsError):
    message = "ZFS snapshot has dependent clones: %(stderr)s"


class DatasetHasChildren(ZfsError):
    message = "ZFS volume still has snapshots: %(stderr)s"


class OutOfSpace(ZfsError):
    message = ("the SAN pool has not enough free space (a thick volume reserves its whole "
               "size): %(stderr)s")


class NotMostRecentSnapshot(ZfsError):
    message = "ZFS can only roll back to the most recent snapshot: %(stderr)s"


# -- tgt ------------------------------------------------------------------------------------

class TargetError(CommandFailed):
    message = "iSCSI export command %(command)s failed (exit %(exit_code)s): %(stderr)s"


class TargetNotFound(TargetError):
    message = "iSCSI target does not exist: %(stderr)s"


class TargetExists(TargetError):
    message = "iSCSI target or account already exists: %(stderr)s"


class TargetBusy(TargetError):
    message = "iSCSI target is busy: %(stderr)s"


class TargetConflict(TargetError):
    message = ("The SAN refused to change a target, LUN or CHAP account that is not this "
               "volume's: %(stderr)s")


class ExportError(ZolException):
    message = "Cannot export %(name)s as %(iqn)s: %(reason)s"


class ParseError(ZolException):
    message = "Cannot parse %(what)s output: %(reason)s (line %(line)r)"


class ManageError(ZolException):
    message = "Cannot manage %(name)r: %(reason)s"
