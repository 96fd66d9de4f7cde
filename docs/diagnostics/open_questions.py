"""Does a model answer spoken questions from outside the synthetic dialogues' domain (issue 8)?

Each question below is spoken by espeak-ng in held-out test voices of data-v2 (not a training voice), padded
with silence, and run through a real streaming session (the file path of `duplex eval`: the session's own
resampling, its frame clock, barge-in policy and heard-text writer). The agent's text slot after the
question is scored by keyword: an answer counts when it contains one of the accepted words. None of these
facts is in `duplex data synth`'s tables, so a model that knows only the synthetic domain cannot answer
them; a speech base made from a text LLM might. Prints JSON (per question: what was heard, what was said).

    python docs/diagnostics/open_questions.py MODEL_DIR [--set KEY=VALUE ...] [--voices en-gb+m4,en-029+Gene]

``--set`` takes session settings as `duplex eval` does, e.g. ``--set heard.source=recognizer --set
heard.recognizer=runs/rec5/best --set heard.during_agent_turn=true``. With ``--oracle`` (heard-text models, with
those settings) the session's heard writer writes the question's true words instead of the recogniser's,
all of them once the user has been quiet for ``ORACLE_AFTER`` frames (about when the recogniser finishes the
last word): what the model would answer if it heard right. Not part of the package.
"""
import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import agent.session
from agent.evaluate import _norm_words, _run_dialogue
from agent.cli import _add_session_flags, _session_config
from agent.data.tts_engines import resample
from agent.heard import HeardWriter
from agent.models import codec_for_layout
from listen.wavio import read_wav, write_wav
from think.transformers_backend import TransformersBackend

# (question, accepted words in the answer): general knowledge outside data-v2's intents and slot tables.
QUESTIONS = [
    ("what do bees make", ["honey"]),
    ("how many days are there in a week", ["seven", "7"]),
    ("what is frozen water called", ["ice"]),
    ("what planet do we live on", ["earth"]),
    ("who wrote romeo and juliet", ["shakespeare"]),
    ("what is the opposite of hot", ["cold"]),
    ("how many hours are in a day", ["twenty-four", "twenty", "24"]),
    ("what do we breathe to stay alive", ["air", "oxygen"]),
    ("what is the largest ocean on earth", ["pacific"]),
    ("what gas do plants take in", ["carbon", "co2"]),
    ("what do you call a baby dog", ["puppy", "pup"]),
    ("which season comes after winter", ["spring"]),
    ("what is the first month of the year", ["january"]),
    ("how many sides does a triangle have", ["three", "3"]),
    ("what do you use to cut paper", ["scissors"]),
    ("what is the tallest animal in the world", ["giraffe"]),
]
SILENCE_BEFORE, SILENCE_AFTER = 0.6, 5.0
ORACLE_AFTER = 3  # quiet frames (240 ms): the recogniser's last word comes a median 0.26 s after speech ends


class OracleWriter(HeardWriter):
    """A heard writer that knows the question: its words go in once the user has spoken and then been quiet."""
    question = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spoke, self.quiet, self.done = False, 0, False

    def reset(self) -> None:
        super().reset()
        self.spoke, self.quiet, self.done = False, 0, False

    def hear(self, audio, frame: int, speech: bool = True) -> list[str]:
        self.spoke = self.spoke or speech
        self.quiet = 0 if speech else self.quiet + 1
        if self.done or not self.spoke or self.quiet < ORACLE_AFTER:
            return []
        self.done = True
        words = OracleWriter.question.split()
        pieces = [p for w in words for p in self.tokenizer.encode(" " + w).ids]
        self.queue.extend((self.layout.heard_id(p), frame + self.max_lag + i) for i, p in enumerate(pieces))
        self.words.extend(words)
        return words


def spoken(text: str, voice: str, tmp: Path, rate: int = 16000) -> tuple[Path, float]:
    """A two-channel WAV as `duplex data synth` writes one (the question on channel 0, a silent agent on 1),
    and the time the question ends (s)."""
    raw = tmp / "q.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
    audio, r = read_wav(raw)
    speech = resample(audio[:, 0], r, rate)
    user = np.concatenate([np.zeros(int(SILENCE_BEFORE * rate), np.float32), speech,
                           np.zeros(int(SILENCE_AFTER * rate), np.float32)])
    path = tmp / f"{abs(hash((text, voice)))}.wav"
    write_wav(path, np.stack([user, np.zeros_like(user)], axis=1), rate)
    return path, SILENCE_BEFORE + len(speech) / rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--voices", default="en-gb+m4,en-029+Gene")
    _add_session_flags(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--oracle", action="store_true", help="write the question's true words as the heard text")
    args = p.parse_args()
    if args.oracle:
        agent.session.HeardWriter = OracleWriter
    cfg = _session_config(args)
    backend = TransformersBackend.from_dir(args.model, threads=args.threads)
    codec = codec_for_layout(backend.layout)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for voice in args.voices.split(","):
            for question, accept in QUESTIONS:
                wav, end = spoken(question, voice, Path(tmp))
                OracleWriter.question = question
                outs, frame_s = asyncio.run(_run_dialogue(backend, codec, cfg, wav))
                after = outs[int(SILENCE_BEFORE / frame_s):]
                said = "".join(o.text_delta for o in outs[int(end / frame_s) - 2:]).strip()
                heard = "".join(o.heard_delta for o in after).strip()
                words = set(_norm_words(said))
                results.append({"voice": voice, "question": question, "heard": heard, "said": said,
                                "correct": any(w in words for w in accept)})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    n = len(results)
    print(json.dumps({"model": args.model, "correct": sum(r["correct"] for r in results), "questions": n,
                      "answered_anything": sum(bool(r["said"]) for r in results), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
