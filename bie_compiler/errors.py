"""User-facing errors. The CLI prints their message and exits non-zero; anything
else that escapes is a bug in bie-compiler and keeps its traceback."""


class BieError(Exception):
    """Base class of every error caused by the user's input."""


class ModelError(BieError):
    """The ONNX model is missing, malformed or uses what we cannot compile."""


class CodecError(BieError):
    """A weight cannot be encoded with the requested codec options."""


class OptionError(BieError):
    """A command-line or API option is wrong."""


class ArtefactError(BieError):
    """A compiled artefact is missing, corrupted, tampered with or foreign."""


class BieWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it on one line)."""
