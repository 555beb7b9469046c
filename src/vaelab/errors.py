class VaelabError(Exception):
    """A user-facing error: bad config or missing input. Printed as one line."""


class ConfigError(VaelabError):
    """An invalid combination or value in the run configuration."""


class DataError(VaelabError):
    """A dataset that cannot be found or loaded."""
