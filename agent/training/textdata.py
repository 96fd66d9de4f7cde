"""Text-only chat sequences: real human chats keep a base LLM's chat ability while it learns speech.

Conversations come from the installed package ``chitchat-dataset`` (7k crowd-sourced two-person chats):
the first person's turns become ``user`` messages, the other's ``assistant`` messages (a turn's messages
joined by spaces), at most ``max_turns`` messages, ending on an assistant message. Each conversation is
rendered with the checkpoint's chat template (``chat_template.jinja``, kept from the base LLM by ``duplex
model init --base``; SmolLM2's adds its default system prompt) or, without one, plain ChatML::

    <|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n{text}<|im_end|>\\n ...

and tokenized with the checkpoint's ``tokenizer.json``. The loss mask marks the tokens of every assistant
reply (its text and ``<|im_end|>``); everything else is context. Conversations are split into train / val
by a hash of their id (``val_percent``), so the held-out split never changes with ``limit``.

Shards: ``text-<split>-NNNN.npz`` with ``ids`` (concatenated, int32), ``offsets`` ``(n + 1,)``, ``mask``
(uint8, one per id: 1 = predicting this id is trained) and ``names``; listed under ``text_shards`` in
``shards.json``.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def chat_template(model_dir: str | Path) -> str:
    """The checkpoint's chat template (Jinja), or ChatML when it has none."""
    from think.base_llm import CHAT_TEMPLATE_FILE

    path = Path(model_dir) / CHAT_TEMPLATE_FILE
    return path.read_text() if path.is_file() else CHATML


def render(messages: list[dict], template: str, add_generation_prompt: bool = False) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def chat_sequence(messages: list[dict], tokenizer, template: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``(n,)`` int32 and loss mask ``(n,)`` uint8 (1 on the assistant replies) of one conversation."""
    text = render(messages, template)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], template, add_generation_prompt=True)
        upto = render(messages[: i + 1], template).rstrip("\n")
        if not text.startswith(before) or not text.startswith(upto):
            raise ValueError("The chat template does not render a conversation as a growing prefix; text-only "
                             "training cannot find the assistant replies in it.")
        spans.append((len(before), len(upto)))
    enc = tokenizer.encode(text)
    mask = np.asarray([any(a <= start < b for a, b in spans) for start, _ in enc.offsets], dtype=np.uint8)
    return np.asarray(enc.ids, dtype=np.int32), mask


def chitchat_conversations(limit: int, max_turns: int = 6) -> list[tuple[str, list[dict]]]:
    """Up to ``limit`` conversations ``(id, messages)`` from chitchat-dataset, in id order."""
    try:
        import chitchat_dataset
    except ImportError as e:
        raise ValueError("Text-only chat data needs the package chitchat-dataset: pip install chitchat-dataset.") from e
    data = chitchat_dataset.Dataset()
    out = []
    for cid in sorted(data):
        turns = [" ".join(str(m["text"]).strip() for m in turn if str(m["text"]).strip())
                 for turn in data[cid]["messages"] if turn]
        turns = [t for t in turns if t][:max_turns]
        if len(turns) % 2:
            turns = turns[:-1]  # end on the assistant
        if len(turns) < 2:
            continue
        out.append((cid, [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]))
        if len(out) >= limit:
            break
    return out


def split_of(conversation_id: str, val_percent: int) -> str:
    return "val" if zlib.crc32(conversation_id.encode()) % 100 < val_percent else "train"


def write_text_shards(out_dir: str | Path, tokenizer, template: str, conversations: int, val_percent: int = 5,
                      max_ids: int = 512, shard_size: int = 1024) -> list[dict]:
    """Tokenize ``conversations`` chats into ``out_dir/text-<split>-NNNN.npz``; returns the shard entries.

    A conversation longer than ``max_ids`` tokens loses its last exchanges until it fits (or is skipped).
    """
    out_dir = Path(out_dir)
    by_split: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for cid, messages in chitchat_conversations(conversations):
        while messages:
            ids, mask = chat_sequence(messages, tokenizer, template)
            if len(ids) <= max_ids:
                by_split.setdefault(split_of(cid, val_percent), []).append((cid, ids, mask))
                break
            messages = messages[:-2]
    entries = []
    for split, items in sorted(by_split.items()):
        for n, i in enumerate(range(0, len(items), shard_size)):
            chunk = items[i:i + shard_size]
            path = out_dir / f"text-{split}-{n:04d}.npz"
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, ids=np.concatenate([c[1] for c in chunk]), mask=np.concatenate([c[2] for c in chunk]),
                     offsets=np.cumsum([0] + [len(c[1]) for c in chunk]).astype(np.int64),
                     names=np.asarray([c[0] for c in chunk]))
            tmp.replace(path)
            entries.append({"file": path.name, "split": split, "sequences": len(chunk),
                            "ids": int(sum(len(c[1]) for c in chunk)),
                            "trained_ids": int(sum(int(c[2].sum()) for c in chunk))})
    return entries


def load_text(shard_dir: str | Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(ids, mask)`` pairs of one split (each ``(n,)``); empty if the shards have no text data."""
    from agent.training.tokenize import load_npz, read_index

    shard_dir = Path(shard_dir)
    index = read_index(shard_dir)
    out = []
    for s in index.get("text_shards", []):
        if s["split"] != split:
            continue
        z = load_npz(shard_dir / s["file"], ("ids", "mask", "offsets"))
        ids, mask, offsets = z["ids"], z["mask"], z["offsets"]
        out.extend((ids[offsets[i]:offsets[i + 1]], mask[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1))
    return out
