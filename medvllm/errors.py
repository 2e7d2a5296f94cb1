"""One exception type per family of failure.

Every message names the bad value, why it is bad, and how to fix it; the CLI prints it as one line.
"""


class MedVLLMError(Exception):
    """Base class: anything the CLI should print as a one-line error instead of a traceback."""


class ConfigError(MedVLLMError, ValueError):
    """A Config field has a bad type, value, or combination with another field or the hardware."""


class ProfileError(MedVLLMError, ValueError):
    """A deployment profile is missing, malformed, or cannot run on this machine."""


class ModelLoadError(MedVLLMError, RuntimeError):
    """A model cannot be found, read, or mapped onto a supported architecture."""


class RequestError(MedVLLMError, ValueError):
    """A single request is invalid (too long, bad sampling parameters, ...)."""


class EngineGoneError(MedVLLMError, RuntimeError):
    """The engine itself cannot go on (a tensor-parallel rank died, it was shut down): a step that raises
    this is not retried request by request; the caller must create a new engine."""


class StepError(MedVLLMError, RuntimeError):
    """An engine step raised: the requests in it finished with finish_reason 'error' (the cause is chained)."""
