"""The session's plumbing: audio frames, the frame clock, bounded queues, cancellation, events, codecs.

Depends only on the standard library and numpy (codec modules import their heavy backends lazily).
"""
from streaming.frame import AudioFrame

__all__ = ["AudioFrame"]
