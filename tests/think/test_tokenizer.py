"""The text tokenizer and its incremental detokenizer."""
from __future__ import annotations

from think.tokenizer import TextStream, default_tokenizer


def test_streamed_deltas_add_up_to_the_text_and_never_split_a_character():
    tok = default_tokenizer()
    text = " hello there, how are you? café ünïcode 🙂 naïve — ok. " * 50
    ids = tok.encode(text).ids
    stream = TextStream(tok)
    deltas = [stream.push(i) for i in ids]
    assert "".join(deltas) == stream.text == tok.decode(ids)
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # some ids only start a multi-byte character: nothing printable yet


def test_reset_starts_a_new_text():
    tok = default_tokenizer()
    stream = TextStream(tok)
    for i in tok.encode(" first turn").ids:
        stream.push(i)
    stream.reset()
    for i in tok.encode(" second").ids:
        stream.push(i)
    assert stream.text == " second"
