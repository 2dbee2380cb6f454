"""Errors that mean "the user's input is wrong": reported as one line, exit status 2."""


class UserError(Exception):
    """Bad input (file, flag, value). The message names the file or flag and the problem."""


class DataError(UserError):
    """A data file is missing, unreadable or does not follow docs/data-format.md."""


class ConfigError(UserError):
    """A flag or config value is invalid."""
