"""Codecs: each one module with its spec, streaming encoder and streaming decoder.

``load_codec(name, **options)`` builds one; ``available_codecs()`` lists them.
"""
from streaming.codecs.base import (
    Codec,
    CodecSpec,
    StreamingDecoder,
    StreamingEncoder,
    available_codecs,
    load_codec,
    register_codec,
)

__all__ = [
    "Codec",
    "CodecSpec",
    "StreamingDecoder",
    "StreamingEncoder",
    "available_codecs",
    "load_codec",
    "register_codec",
]
