"""Does a speech base hear? Greedy transcripts of held-out user turns, in stage a's listening format.

Takes the listening sequences of the test split (``align-test-*.npz``, written by ``duplex data tokenize
--model <speech base or its init>``): ``[SS] user audio ids [SYS] transcript [EOT]``. For each, the model
continues ``[SS] audio [SYS]`` greedily over the text ids and EOT. The score is the word error rate against the
transcript; teacher-forced, the transcript's cross-entropy and argmax accuracy over the text ids. Each with the
turn's own audio and with another turn's audio: the gap between the two is what the model hears, the rest is
guessed from the words before. Prints JSON (and a few examples). Not part of the package.

    python docs/diagnostics/speech_base_listening.py MODEL SHARDS [N_TURNS]

On a GPU machine it runs there (`smol_gpu_run.sh` scores stage a and the speech base with it).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from agent.codec_eval import word_errors
from agent.training.align import LISTEN, load_align
from think.checkpoint import load_checkpoint


def listening_turns(shards: Path, limit: int) -> list[np.ndarray]:
    seqs = load_align(shards, "test")[LISTEN]
    if not seqs:
        raise SystemExit(f"No test listening sequences in {shards}; run `duplex data tokenize --model ...`.")
    step = max(1, len(seqs) // limit)  # spread over the split's dialogues and voices
    return seqs[::step][:limit]


def main() -> None:
    model_dir, shards = sys.argv[1], Path(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    loaded = load_checkpoint(model_dir)
    lay, tok = loaded.layout, loaded.tokenizer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = loaded.model.to(device).eval()
    sys_id, text = lay.special("system_start"), lay.text_vocab_size
    turns = listening_turns(shards, limit)
    cuts = [int(np.flatnonzero(s == sys_id)[0]) for s in turns]
    out, examples = {}, []
    for name, shift in (("real", 0), ("other_turn", 7)):
        nll = hits = ids = errors = words = 0
        for i, (seq, cut) in enumerate(zip(turns, cuts)):
            j = (i + shift) % len(turns)
            audio = turns[j][: cuts[j] + 1]  # [SS] audio [SYS] of this turn or of another
            ref = [int(t) for t in seq[cut + 1:-1]]
            with torch.inference_mode():
                batch = torch.tensor(np.concatenate([audio, ref]), dtype=torch.long, device=device)[None]
                logits = model(batch).logits[0]
            scored = logits[len(audio) - 1:-1, :text].float()  # the transcript's positions, text rows only
            target = torch.tensor(ref, device=device)
            nll += float(torch.nn.functional.cross_entropy(scored, target, reduction="sum"))
            hits += int((scored.argmax(-1) == target).sum())
            ids += len(ref)
            said, heard = tok.decode(ref).strip(), greedy(model, audio, text, lay.eot_id, len(ref) + 10, tok)
            e, n = word_errors(said, heard)
            errors, words = errors + e, words + n
            if name == "real" and len(examples) < 6:
                examples.append({"said": said, "heard": heard})
        out[name] = {"turns": len(turns), "transcript_ce": round(nll / ids, 3), "argmax_accuracy": round(hits / ids, 3),
                     "greedy_wer": round(errors / max(words, 1), 3)}
    print(json.dumps({"model": model_dir, **out, "examples": examples}, indent=2))


def greedy(model, prompt: np.ndarray, text: int, eot: int, most: int, tok) -> str:
    """The transcript the model writes after ``prompt`` (text ids and EOT only)."""
    device = model.get_output_embeddings().weight.device
    allowed = torch.zeros(model.get_output_embeddings().weight.shape[0], dtype=torch.bool, device=device)
    allowed[:text] = True
    allowed[eot] = True
    hyp: list[int] = []
    with torch.inference_mode():
        result = model(torch.tensor(prompt, dtype=torch.long, device=device)[None], use_cache=True)
        for _ in range(most):
            nxt = int(result.logits[0, -1].masked_fill(~allowed, float("-inf")).argmax())
            if nxt == eot:
                break
            hyp.append(nxt)
            result = model(torch.tensor([[nxt]], device=device), past_key_values=result.past_key_values, use_cache=True)
    return tok.decode(hyp).strip()


if __name__ == "__main__":
    main()
