"""Errors that mean the input is wrong. Prefect does not retry them: a retry would fail the same way."""


class AlignflowError(Exception):
    """Bad input (config, data, model) that no retry can fix."""


class ConfigError(AlignflowError):
    """A config key is unknown or has a bad value; the message names the key path."""


class DataValidationError(AlignflowError):
    """A dataset failed its expectations; the message names the file, the expectation and example rows."""
