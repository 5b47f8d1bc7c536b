"""What a user reads of a refusal from inside an exported graph."""

import re

from kgen.errors import first_line

_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[{{node")


def graph_reason(message, default="INVALID_ARGUMENT"):
    """The first line of a TensorFlow error worth showing: a failed check's
    own message (which names the input) when there is one, without
    TensorFlow's node and stack lines; `default` when nothing is left."""
    found = re.search(r"assertion failed: \[(.*?)\](?= \[|\s*$)", message, re.MULTILINE)
    if found:
        return found.group(1)
    kept = [line for line in message.splitlines() if not line.strip().startswith(_NOISE)]
    return first_line("\n".join(kept), default)
