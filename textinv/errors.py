"""Errors a user can act on. The CLI prints each as one line on stderr and exits with `exit_code`."""


class TextinvError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""

    exit_code = 1


class EmbeddingFormatError(TextinvError):
    """An embedding file that cannot be read, or is not an embedding at all."""


class UnsafeFileError(EmbeddingFormatError):
    """A pickle that asks for code we refuse to run."""


class ConfigError(TextinvError):
    """A config key, type or value that cannot work."""


class DataError(TextinvError):
    """A training image folder that cannot be used."""


class ModelError(TextinvError):
    """A model that cannot be found, loaded, or does not fit an embedding."""


class ConceptError(TextinvError):
    """A concept that cannot be fetched from the hub."""


class OutputExistsError(TextinvError):
    """An output path that already exists (pass --force to overwrite)."""


class UsageError(TextinvError):
    """A command line that cannot work as given (a missing PROMPT with no terminal to ask on, ...)."""

    exit_code = 2


class Interrupted(TextinvError):
    """Ctrl-C or a kill, after which what was finished is kept; the CLI says so in one line and exits 130.
    `quiet` is set where another process of the same run says it."""

    exit_code = 130
    quiet = False


class MetadataWarning(UserWarning):
    """A malformed field in a file from elsewhere (an embedding's metadata, a concept's token file) that was
    ignored; the CLI prints it as one `warning:` line."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (or its type's name), for quoting a library's error in ours."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


class WriteError(TextinvError, OSError):
    """An output that the operating system would not let us write (disk full, read-only, not a folder).
    Still an OSError with the original `errno` and `strerror`, for callers that catch those and say it their way."""

    def __init__(self, message: str, errno: int | None = None, strerror: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.strerror = errno, strerror

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] strerror"
        return self.args[0]
