"""User-facing errors. The CLI prints their message (no traceback) and exits with status 2."""
import re


class RCSegNeXtError(Exception):
    """Base class: a problem the user can act on; the message says what and what to do."""


class ImageReadError(RCSegNeXtError):
    """A file or DICOM folder cannot be read as a 3D image."""


class DatasetError(RCSegNeXtError):
    """A dataset folder, dataset.json or a case in it is not valid."""


class PlanError(RCSegNeXtError):
    """plans.json is invalid, or a plan cannot be made from the given values."""


class ModelError(RCSegNeXtError):
    """A model folder or checkpoint is missing, corrupt or does not fit its plans."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's run over many lines), or its type name when it is empty."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # without terminal colour codes
    return text.splitlines()[0] if text else type(exc).__name__


def itk_reason(exc: BaseException) -> str:
    """The informative part of an ITK exception (drops source paths, object addresses and errno noise)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [re.sub(r"^(ITK ERROR|sitk::ERROR): (\w+\(0x[0-9a-f]+\): )?", "", line) for line in lines
              if not line.startswith(("Exception thrown", "Reason: No such file")) and not line.endswith(":")]
    return useful[-1] if useful else "unknown reason"
