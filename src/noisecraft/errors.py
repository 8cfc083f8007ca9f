"""The exception types that mean "the user asked for something we cannot do".

Their message is a single sentence that says what to change. The CLI prints it and exits
non-zero; the server turns it into a 4xx (422 naming `field` when there is one, 507 for
`OutOfMemory`). Anything else is a bug or a fault.
"""


class UserError(ValueError):
    """A mistake in the user's input, explained in one sentence; `field` names the setting at fault, if one is."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ModelFileError(UserError):
    """A model file that is missing, corrupt, unsafe or not understood."""


class OutOfMemory(UserError):
    """The request does not fit in memory; a smaller size or fewer images would."""


def out_of_memory(count: int | None = None, width: int | None = None, height: int | None = None) -> OutOfMemory:
    """The one sentence for a generation that ran out of memory (of `count` images of width x height, when known)."""
    what = f" making {count} image(s) of {width}x{height}" if count is not None else ""
    return OutOfMemory(f"out of memory{what}; lower the size, the number of images or the batch size")


def shown(value, limit: int = 60) -> str:
    """`value` as a message quotes it (repr), cut to `limit` characters: an error never echoes megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + (")" if text.endswith(")") else "")
