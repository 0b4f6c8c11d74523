"""Exceptions shared by the pipeline stages, the CLI and the Serve app."""
from __future__ import annotations


class InputError(ValueError):
    """A user-supplied input (video, frames folder, pose track) cannot be used.

    The message always names the offending file and the reason, e.g.
    ``"clip.mp4: no video stream (audio-only file?)"``.
    """

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
