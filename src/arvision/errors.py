"""Exceptions that carry a message meant for a person, not a traceback."""


class ArvisionError(Exception):
    """Base class: the CLI prints its message on one line and exits non-zero."""


class CheckpointError(ArvisionError):
    """A checkpoint folder or file is missing, unreadable, or does not match the model."""


class InputError(ArvisionError, ValueError):
    """A user-supplied argument (image, prompt, size, path) cannot be used."""
