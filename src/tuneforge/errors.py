"""User-facing errors.

Anything a user can cause (a bad recipe key, a missing file, a pickle-only model directory) raises
``TuneforgeError``. The CLI prints its message and exits with status 2, never a traceback; anything
else is a bug in tuneforge and keeps its traceback.
"""


class TuneforgeError(Exception):
    """An error caused by user input; its message says what is wrong and how to fix it."""


class RecipeError(TuneforgeError):
    """The recipe (YAML file plus overrides) does not validate."""


class DataError(TuneforgeError):
    """A data file is missing, unreadable, or has too many rejected rows."""


class ModelResolutionError(TuneforgeError):
    """A model name/path could not be resolved to local weights we are allowed to load."""


class TrainingDiverged(TuneforgeError):
    """The loss became NaN or infinite."""
