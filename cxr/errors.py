"""The errors a user can cause (bad input or settings), as opposed to bugs: the entry points print these as one
``error: <message>`` line and exit non-zero, without a traceback (``cxr.cli``)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key and what would fix it."""


class PredictError(ValueError):
    """A problem with the command itself (model file, input list): one line, exit status 2."""


class DownloadError(RuntimeError):
    """A failure the user can act on; the message names the archive, URL or file."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception type that means "your input or settings are wrong" (imported lazily: no cycles)."""
    from omegaconf.errors import OmegaConfBaseException

    from cxr.models.checkpoints import CheckpointError
    from cxr.data.cache import CacheError
    from cxr.data.images import ImageIndexError, ImageReadError
    from cxr.data.labels import LabelFileError
    from cxr.data.leakage import LeakageError
    from cxr.data.splits import SplitError
    from cxr.evaluation.report import ReportError
    from cxr.jobs.train import DataCheckError
    from cxr.run_dir import RunDirectoryError
    from cxr.safe_instantiate import UnsafeTargetError

    return (ConfigError, PredictError, LabelFileError, ImageIndexError, ImageReadError, SplitError, DataCheckError,
            RunDirectoryError, CheckpointError, UnsafeTargetError, ReportError, CacheError, LeakageError,
            OmegaConfBaseException)
