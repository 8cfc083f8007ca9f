"""The one exception type that means "the user asked for something we cannot do".

Its message is a single sentence that says what to change. The CLI prints it and
exits non-zero; the server turns it into a 4xx. Anything else is a bug or a fault.
"""


class UserError(ValueError):
    """A mistake in the user's input, explained in one sentence."""


class ModelFileError(UserError):
    """A model file that is missing, corrupt, unsafe or not understood."""
