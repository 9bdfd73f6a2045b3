"""Errors a user can cause.

Every error raised because of bad input (a missing path, a corrupt file, a manifest from
the future) is a `SuntoolError` whose message says what is wrong and what to do. The CLI
prints it as one red line and exits with code 2; anything else is a bug and stays a
traceback.
"""


class SuntoolError(Exception):
    """A user-facing error: the message names the path/field and the remedy."""


class ArtifactError(SuntoolError):
    """A split artifact (or one of its halves) is missing, invalid or inconsistent."""


class CheckpointError(SuntoolError):
    """A Hugging Face checkpoint directory cannot be used."""


class FingerprintMismatch(ArtifactError):
    """A half's tensors no longer match the fingerprint recorded for them."""
