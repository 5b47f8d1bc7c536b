"""The error every loader raises for bad input data."""

from kgen.errors import UserError


class DataError(UserError, ValueError):
    """A data file or setting is missing, malformed or out of range.

    The message starts with the file (or setting) and says what was
    expected; `kgen` prints it as one line, `kgen: error: ...`, and exits
    with status 2.
    """
