"""Reading the files of procfs, sysfs and cgroupfs, with the failures a collector reports."""

from __future__ import annotations

import errno
from pathlib import Path

from collectors.base import CollectorError, Reason


def read_text(path: Path, *, denied_is_absent: bool = False) -> str | None:
    """The file's text, or None when it does not exist (an optional source such as PSI) or the
    kernel does not support reading it (PSI built in but switched off with psi=0 answers so).
    ``denied_is_absent``: a refusal means the same as a missing file, for another process's files
    that a procfs mounted with hidepid=1 (noaccess) shows but refuses with EPERM."""
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except PermissionError as error:
        if denied_is_absent:
            return None
        raise CollectorError(Reason.PERMISSION, f"cannot read {path}: {error.strerror}") from None
    except OSError as error:
        if error.errno == errno.EOPNOTSUPP:
            return None
        raise CollectorError(Reason.OTHER, f"cannot read {path}: {error.strerror}") from None


def read_required(path: Path) -> str:
    text = read_text(path)
    if text is None:
        raise CollectorError(Reason.OTHER, f"{path} does not exist; is procfs mounted there?")
    return text
