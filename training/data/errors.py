class DataError(ValueError):
    """Raised when a data source is missing or malformed; the message says what and where."""
