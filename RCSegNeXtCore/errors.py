"""User-facing errors. The CLI prints their message (no traceback) and exits with status 2."""


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
