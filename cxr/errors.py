"""The errors a user can cause (bad input or settings), as opposed to bugs. Every one is a :class:`UserError`: the
entry points (``cxr.cli``) print it as one ``error: <message>`` line and exit non-zero, without a traceback.

This module imports nothing of cxr: each module defines its own errors where they are raised, as subclasses of
:class:`UserError` (``LabelFileError`` in ``cxr.data.labels``, ``CheckpointError`` in ``cxr.models.checkpoints``...);
only the kinds several layers raise live here.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or settings; the message names the file, row or key and what would fix it."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work; the message names the key and what would fix it."""


class PredictError(UserError, ValueError):
    """A problem with the command itself (model file, input list): one line, exit status 2."""


class DownloadError(UserError, RuntimeError):
    """A failure the user can act on; the message names the archive, URL or file."""
