"""Errors a user can fix: the CLI prints the one-line message and exits with code 2."""


class ConfigError(ValueError):
    """A configuration or input that cannot run; the message names the values and the fix."""
