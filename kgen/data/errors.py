"""The error every loader raises for bad input data."""


class DataError(ValueError):
    """A data file or setting is missing, malformed or out of range.

    The message names the file (or setting) and what was expected.
    """
