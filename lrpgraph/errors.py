"""The one error family a user can meet. The CLI prints the message as one line and exits non-zero."""


class LrpgraphError(Exception):
    """A problem with the user's input: the message says what, where, and what to do."""

    exit_code = 2


class UnsupportedModelError(LrpgraphError):
    """The model holds ops or patterns the converter cannot explain. near_misses: the pattern units
    (patterns.NearMiss) that almost matched there, each with the reason it did not fuse."""

    def __init__(self, message: str, near_misses: list = ()):
        super().__init__(message)
        self.near_misses = list(near_misses)


class NotConvertedError(LrpgraphError):
    """A model given where a converted (lrpgraph) model is needed."""


class MissingDependencyError(LrpgraphError, ImportError):
    """An optional dependency (an onnxruntime build, torch) is not installed: the message names the extra."""
