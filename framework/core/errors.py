"""Every error the framework raises for a user to read: a leaf module (no imports of its own), so a model or a
data set names its errors without importing the config loader, the checkpoint code or the data pipeline.

Each message names the culprit (the key, the file, the record) and the fix. The command-line entry points print
these as one ``error:`` line (:data:`USER_ERRORS`); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot run; the message names the key, the file and the fix."""


class RegistryError(KeyError):
    """An unknown or duplicate registry name. ``str()`` is the full, user-facing message."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be read, written or does not fit the model; the message names the
    file and the keys."""


class WeightLoadError(CheckpointError):
    """Image encoder weights that cannot be read or do not fit; the message names the keys."""


class NotABertCheckpoint(ConfigError):
    """``model.qformer.bert`` names something that is not a usable BERT folder."""


class MissingDataError(FileNotFoundError):
    """A data file a run needs is missing: the message says which file, which entry, and how to get it."""


class BadDataError(ValueError):
    """Data that cannot be trained on (too many bad records, no file for a split): the message says which."""


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the iteration, the term and the last checkpoint."""


USER_ERRORS = (ConfigError, RegistryError, MissingDataError, BadDataError, CheckpointError, ImportError,
               NonFiniteLossError)
