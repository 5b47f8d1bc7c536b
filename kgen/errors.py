"""The base of every error a user can cause, and the one line it is shown as.

A `UserError` is a mistake of whoever called kgen: a command-line argument,
a recipe or one of its settings, a data file, a model file or an export, an
output path, an environment variable, a request to a server. Its message
starts with the bad value and says what was expected, in its first line.

Each part of kgen raises its own subclass (`kgen.config.ConfigError`,
`kgen.data.DataError`, `kgen.export.sample.SampleError`, ...), so a caller
can catch one kind; many keep `ValueError` or `RuntimeError` as a second
base, so code that catches those still does. Catch `UserError` to tell any
mistake of the caller's from a failure of kgen itself:

```python
from kgen import training
from kgen.errors import UserError
from kgen.errors import first_line

try:
    training.train("vae_digits", sets={"epochs": "0"})
except UserError as e:
    print(first_line(e))      # --set epochs=0: epochs must be an integer >= 1
```

The `kgen` command prints a `UserError` as one line, `kgen: error:
<first line of the message>`, and exits with status 2; any other exception
as `kgen: internal error: ...` with status 1. `--debug` adds the traceback.

Not every error of kgen is a `UserError`: a failed internal check (a warm-up
request an export cannot build) is a failure of kgen, and `kgen serve`
answers its clients' mistakes with a status code of their protocol
(`kgen.serving.errors.ServingError`).
"""


class UserError(Exception):
    """A mistake of kgen's caller; the message's first line names the bad value.

    Raise a subclass of it (one per part of kgen) rather than `UserError`
    itself. The `kgen` command shows it as `kgen: error: <first line>` and
    exits with status 2.

    Example:

    ```python
    class DeployError(UserError, ValueError):
        \"\"\"A `kgen deploy` argument or input tree is wrong.\"\"\"

    raise DeployError(f"{tree}: no such directory")
    ```
    """


def first_line(error_or_text, default=None):
    """The first line of an error's message (or of a text) that is not blank.

    Args:
        error_or_text: an exception, or a string.
        default: what to return when every line is blank; by default the
            exception's class name (`"KeyError"`), or `""` for a string.

    Returns:
        That line with its surrounding white space removed.

    Example:

    >>> first_line(ValueError("\\n  bad value\\ndetails"))
    'bad value'
    >>> first_line(KeyError())
    'KeyError'
    """
    text = error_or_text if isinstance(error_or_text, str) else str(error_or_text)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    if default is not None:
        return default
    return "" if isinstance(error_or_text, str) else type(error_or_text).__name__
