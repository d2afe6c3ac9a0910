"""User-facing errors.

Every mistake a user can make (a bad name, a bad value, missing or corrupt data, an
untrusted checkpoint) raises :class:`SSLBenchError` with a one-line message that says what
to do. The CLI prints it as ``sslbench: error: <message>`` and exits with status 2, without
a traceback.
"""


class SSLBenchError(Exception):
    """An error caused by input: printed as one line by the CLI, no traceback."""


class ConfigError(SSLBenchError):
    """A bad config key or value."""


class DataError(SSLBenchError):
    """A dataset is missing, unreadable or corrupt."""


class CheckpointError(SSLBenchError):
    """A checkpoint is missing, corrupt or carries an untrusted payload."""


class TrainingDiverged(SSLBenchError):
    """The loss became NaN or infinite; the run ends with status FAILED."""


def did_you_mean(name: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices if c is not None], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
