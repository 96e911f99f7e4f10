"""User-facing errors. The CLI prints them as one line and exits with code 2."""


class HdlmError(Exception):
    """A problem with the user's input: the message names it and says how to fix it."""


class ConfigError(HdlmError):
    """Unknown key, wrong type or inconsistent values in a run configuration."""


class DataError(HdlmError):
    """A corpus, file or tokenizer that cannot be found or used."""


class CheckpointError(HdlmError):
    """A checkpoint that is missing, corrupt, or does not fit what it is used for."""
