"""The one exception type raised by the data package."""


class DataError(ValueError):
  """Bad, missing or inconsistent input data; the message names the culprit."""
