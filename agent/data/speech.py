"""Sentences, real recordings and synthesized speech sets (WAV files + a JSONL manifest).

``build_speech_set(out_dir, ...)`` speaks sentences (chitchat-dataset messages and Harvard
sentences) with many offline voices (:mod:`agent.data.voices`), 16 kHz mono PCM16 WAV, and writes
``manifest.jsonl`` rows ``{"path", "text", "voice", "split", "seconds"}`` with ``split`` one of
``train`` / ``held_out`` (voices never used for training) plus ``real`` rows: the recordings that
install offline (Debian ``codec2-examples``: untranscribed, train split; ``pocketsphinx-testdata``
LibriVox: transcribed, ``real_eval`` split, never trained on).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from collections.abc import Iterator

import numpy as np

# IEEE "Harvard" sentences (1969, public domain): phonetically balanced, the classic intelligibility set.
HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.", "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.", "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.", "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.", "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.", "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.", "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.", "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.", "What joy there is in living.",
    "A king ruled the state in the early days.", "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.", "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.", "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.", "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.", "Mesh wire keeps chicks inside.",
    "The frosty air passed through the coat.", "The crooked maze failed to fool the mouse.",
    "Adding fast leads to wrong sums.", "The show was a flop from the very start.",
    "A saw is a tool used for making boards.", "The wagon moved on well oiled wheels.",
    "March the soldiers past the next hill.", "A cup of sugar makes sweet fudge.",
    "Place a rosebush near the porch steps.", "Both lost their lives in the raging storm.",
]
# The Harvard sentences the eval speaks; never used for training.
EVAL_SENTENCES = HARVARD[:20]

PSPHINX_LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CODEC2_WAVS = Path("/usr/share/codec2/wav")


def chitchat_sentences(limit: int | None = None, min_words: int = 4, max_words: int = 22, seed: int = 0) -> list[str]:
    """Messages from PyPI ``chitchat-dataset`` (real human chats, MIT), cleaned, shuffled."""
    try:
        import chitchat_dataset
    except ImportError:
        return []
    out, seen = [], set()
    for msg in chitchat_dataset.MessageDataset():
        t = " ".join(str(msg).split())
        if not t or not t.isascii() or re.search(r"https?:|[<>@#{}\[\]]", t):
            continue
        n = len(t.split())
        if min_words <= n <= max_words and t.lower() not in seen:
            seen.add(t.lower())
            out.append(t)
    rng = np.random.default_rng(seed)
    rng.shuffle(out)
    return out[:limit] if limit is not None else out


def training_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences: chitchat messages plus the Harvard sentences not used by the eval."""
    extra = [s for s in HARVARD if s not in EVAL_SENTENCES]
    chat = chitchat_sentences(limit=max(n - len(extra), 0), seed=seed) if n > len(extra) else []
    out = (chat + extra)[:n] if chat else (extra * (n // len(extra) + 1))[:n]
    return out


def real_recordings() -> list[dict]:
    """Real speech that installs offline: ``[{"path", "text" or None, "split"}]``."""
    rows = []
    if (PSPHINX_LIBRIVOX / "transcription").is_file():
        for line in (PSPHINX_LIBRIVOX / "transcription").read_text().splitlines():
            m = re.match(r"\s*<s>(.*)</s>\s*\((\S+)\)", line)
            if m and (PSPHINX_LIBRIVOX / f"{m.group(2)}.wav").is_file():
                rows.append({"path": str(PSPHINX_LIBRIVOX / f"{m.group(2)}.wav"), "text": m.group(1).strip(), "split": "real_eval"})
    if CODEC2_WAVS.is_dir():
        for p in sorted(CODEC2_WAVS.glob("*.wav")):
            if p.name != "all.wav":  # all.wav concatenates the others
                rows.append({"path": str(p), "text": None, "split": "train"})
    return rows


def load_wav(path: str | os.PathLike, rate: int = 16000) -> np.ndarray:
    import soundfile as sf

    from agent.data.voices import resample

    pcm, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(pcm.mean(axis=1), int(sr), rate)


def write_wav(path: str | os.PathLike, pcm: np.ndarray, rate: int) -> None:
    import soundfile as sf

    sf.write(str(path), np.clip(pcm, -1, 1), rate, subtype="PCM_16")


def read_manifest(path: str | os.PathLike) -> list[dict]:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    base = Path(path).parent
    for r in rows:
        if not os.path.isabs(r["path"]):
            r["path"] = str(base / r["path"])
    return rows


def build_speech_set(out_dir: str | os.PathLike, utterances: int = 2000, held_out_utterances: int = 10,
                     n_espeak: int = 120, rate: int = 16000, seed: int = 0, include_real: bool = True,
                     voices: dict[str, list[str]] | None = None, progress: bool = True) -> Path:
    """Synthesize a training set and a held-out-voice eval set (``held_out_utterances`` per
    held-out voice); returns the manifest path.

    Resumable: utterances whose WAV already exists are not synthesized again.
    """
    from tqdm import tqdm

    from agent.data.voices import synthesize, voice_set

    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    vs = voices or voice_set(n_espeak=n_espeak, seed=seed)
    rng = np.random.default_rng(seed)
    jobs: list[tuple[str, str, str]] = []
    train_voices = vs["train"]
    # natural voices (piper/flite/festival) get a larger share than any single espeak voice
    weights = np.array([4.0 if not v.startswith("espeak-ng") else 1.0 for v in train_voices])
    weights /= weights.sum()
    for text in training_sentences(utterances, seed=seed):
        jobs.append((text, train_voices[int(rng.choice(len(train_voices), p=weights))], "train"))
    for k, v in enumerate(vs["held_out"]):  # each held-out voice speaks its own slice of the eval sentences
        for i in range(held_out_utterances):
            jobs.append((EVAL_SENTENCES[(k * held_out_utterances + i) % len(EVAL_SENTENCES)], v, "held_out"))
    rows = []
    it = tqdm(jobs, desc="synthesizing", unit="utt", disable=not progress)
    for i, (text, voice, split) in enumerate(it):
        rel = f"wav/{split}_{i:06d}.wav"
        path = out / rel
        if not path.exists():
            try:
                pcm, _ = synthesize(text, voice, rate)
            except Exception as e:  # one broken voice/text must not stop a long job
                it.write(f"skipped {voice!r}: {e}")
                continue
            peak = float(np.abs(pcm).max()) if len(pcm) else 0.0
            if peak < 1e-3:
                continue
            write_wav(path, pcm * (0.9 / peak if peak > 0.9 else 1.0), rate)
        import soundfile as sf

        rows.append({"path": rel, "text": text, "voice": voice, "split": split, "seconds": sf.info(str(path)).duration})
    if include_real:
        for r in real_recordings():
            pcm = load_wav(r["path"], rate)
            rows.append({"path": r["path"], "text": r["text"], "voice": "real:" + Path(r["path"]).stem,
                         "split": r["split"], "seconds": len(pcm) / rate})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "voices.json").write_text(json.dumps(vs, indent=1) + "\n")
    return manifest


def iter_split(rows: list[dict], split: str) -> Iterator[dict]:
    return (r for r in rows if r["split"] == split)
