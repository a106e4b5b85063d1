"""The one exception type the project raises for problems a user can fix (bad config, missing file, bad data)."""


class BrunoError(Exception):
    """A user-facing error: the message names the field or file and says how to fix it."""
