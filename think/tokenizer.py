"""The text side of the layout: a word-piece tokenizer and an incremental detokenizer.

The agent writes at most one text id per frame (12.5 per second at 80 ms), so text ids must be word
pieces, not characters. Small models use the shipped byte-level BPE (``assets/text_tokenizer.json``,
2048 ids, lower-cased, trained on the MIT-licensed ``chitchat-dataset`` chats; rebuild it with
``python -m think.tokenizer``). Models made from a base LLM keep that LLM's tokenizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.decoders import DecodeStream

ASSETS = Path(__file__).parent / "assets"
DEFAULT_TOKENIZER = ASSETS / "text_tokenizer.json"
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
    """Train a lower-cased byte-level BPE; any string stays encodable (falls back to bytes)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def default_tokenizer() -> Tokenizer:
    """The shipped small tokenizer (no download)."""
    return Tokenizer.from_file(str(DEFAULT_TOKENIZER))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load ``tokenizer.json`` from a checkpoint directory."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {TOKENIZER_FILE} in {directory}; a duplex checkpoint keeps its text "
                                f"tokenizer there (rebuild the checkpoint with `duplex model init`).")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        raise ValueError(f"{path} is not a valid tokenizer file ({e}); rebuild the checkpoint with "
                         f"`duplex model init`.") from None


def encode_system_prompt(tokenizer: Tokenizer, prompt: str | None) -> list[int]:
    """The text ids of a session's system prompt (``[]`` for none).

    A prompt from JSON may hold lone UTF-16 surrogates (``"\\ud800"`` is valid JSON, not valid text),
    which the tokenizer rejects with a bare TypeError: they become U+FFFD, as any text decoder would.
    """
    if prompt is None or prompt == "":
        return []
    if not isinstance(prompt, str):
        raise TypeError(f"The system prompt must be text (str), got {type(prompt).__name__}.")
    prompt = prompt.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return tokenizer.encode(prompt).ids


class TextStream:
    """Turns a stream of text ids into text deltas without splitting multi-byte characters.

    Feed ids one at a time (``push``); each call returns the new printable text since the last call ('' while
    a character's bytes are still incomplete). Built on ``tokenizers``' own incremental decoder, so a push costs
    the same in a days-long session as in its first second (decoding every id so far would not).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=False)
        self._parts: list[str] = []

    def push(self, token_id: int) -> str:
        delta = self._stream.step(self.tokenizer, int(token_id)) or ""
        if delta:
            self._parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def reset(self) -> None:
        self._stream = DecodeStream(skip_special_tokens=False)
        self._parts.clear()


def _chitchat_texts() -> Iterable[str]:
    import chitchat_dataset  # optional; only needed to rebuild the shipped tokenizer

    for convo in chitchat_dataset.Dataset().values():
        for turn in convo["messages"]:
            for msg in turn:
                yield msg["text"]


if __name__ == "__main__":
    ASSETS.mkdir(exist_ok=True)
    tokenizer = train_tokenizer(_chitchat_texts(), vocab_size=2048)
    tokenizer.save(str(DEFAULT_TOKENIZER))
    print(f"wrote {DEFAULT_TOKENIZER} ({tokenizer.get_vocab_size()} ids)")
