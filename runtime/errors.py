"""Errors raised by edgesd. Every message says what went wrong and how to fix it.

EdgesdError                      base class; the CLI prints its message as one line and exits 2
├── ModelFolderError             missing, half-exported, hash-mismatched or too-new model folder
├── InvalidInputError            bad image or out-of-range option (also a ValueError)
├── BackendUnavailableError      the requested engine or device is not installed / not present
└── UnsupportedSchedulerError    unknown scheduler class or unsupported config value (also a ValueError)
"""


class EdgesdError(Exception):
    """Base class of every error edgesd raises on purpose. Its message uses the Python API's words
    (size=, low_memory=True); `cli`, where given, says the same in the command line's (--resize,
    --low-memory), which the CLI prints instead."""

    def __init__(self, message: str = "", cli: str | None = None):
        super().__init__(message)
        self.cli = cli or message


class ModelFolderError(EdgesdError):
    """The model folder cannot be used as it is."""


class InvalidInputError(EdgesdError, ValueError):
    """An input image or option is out of range or unreadable."""


class BackendUnavailableError(EdgesdError):
    """The requested inference engine or device cannot be used here."""


class UnsupportedSchedulerError(EdgesdError, ValueError):
    """The scheduler class, or one of its config values, is not supported; the message lists what is."""
