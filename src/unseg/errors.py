"""Exceptions with messages a user can act on: each names the file or value at fault."""


class UnsegError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""

    def __str__(self) -> str:
        # torch re-raises a data-loader worker's exception as the same class with the worker's
        # whole traceback as its message; the user needs only the original message at its end
        text = super().__str__()
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if text.startswith("Caught ") and "\nOriginal Traceback" in text and marker in text:
            return text[text.rindex(marker) + len(marker) :].rstrip("\n")
        return text


class RegistryError(UnsegError, KeyError):
    """An unknown backbone, dataset or method name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class LayoutError(UnsegError, FileNotFoundError):
    """A dataset folder that lacks a path its layout needs."""


class ImageError(UnsegError, ValueError):
    """An image or mask that cannot be read, or whose size does not fit its image."""


class WeightsError(UnsegError, ValueError):
    """A checkpoint that cannot be read, or that holds another architecture."""


class CacheError(UnsegError, RuntimeError):
    """A feature cache that is incomplete, corrupt or built with other settings."""


class MissingExtraError(UnsegError, ImportError):
    """An optional dependency that is not installed; the message names the extra that provides it."""


class ConfigError(UnsegError, ValueError):
    """A config file or override with an unknown key, a value of the wrong type or outside its allowed values."""


class SettingError(UnsegError, ValueError):
    """An argument outside its allowed values (a size, a count, a path to resume from); the message says which are."""


class OutputError(UnsegError, OSError):
    """A folder that results, caches or checkpoints must be written to but cannot be."""
