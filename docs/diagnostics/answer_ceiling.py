"""How many held-out answers could a model trained only on this data say at all? For each test question
(``qa`` of ``duplex data synth`` dialogues; the interrupted ones are not scored, as in ``duplex eval``):

- ``exact_in_train``: the same answer text occurs in the training split (a model that memorised the training
  answers and picked the right one would say it);
- ``words_in_train``: every word of the answer is said by the agent somewhere in the training split (the most
  a model could compose: a held-out slot value such as a capital it never heard cannot be said).

``duplex eval`` counts an answer correct when every expected word is said, so ``words_in_train`` bounds its
``answer_accuracy`` for a model that knows only this data. Prints JSON (overall and per intent).

    python docs/diagnostics/answer_ceiling.py DATA_DIR [SPLIT]
"""
import collections
import json
import sys
from pathlib import Path

from agent.evaluate import _norm_words as words  # the words duplex eval's answer_score compares
from agent.training.tokenize import iter_dialogues


data, split = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "test")
train_answers, train_words, held = set(), set(), []
for _, rec in iter_dialogues(data):
    if rec.get("split") == "train":
        train_answers |= {" ".join(words(q["answer"])) for q in rec.get("qa", [])}
        train_words |= {w for t in rec["turns"] if t["speaker"] == "agent" for w in words(t.get("text", ""))}
    elif rec.get("split") == split:
        held += [q for q in rec.get("qa", []) if q.get("completed") is not False]
by = collections.defaultdict(collections.Counter)
for q in held:
    c = by[q.get("intent", "?")]
    c["questions"] += 1
    c["exact_in_train"] += " ".join(words(q["answer"])) in train_answers
    c["words_in_train"] += all(w in train_words for w in words(q["answer"]))


def rates(c: collections.Counter) -> dict:
    n = max(1, c["questions"])
    return {"questions": c["questions"], "exact_in_train": round(c["exact_in_train"] / n, 3),
            "words_in_train": round(c["words_in_train"] / n, 3)}


total = sum(by.values(), collections.Counter())
print(json.dumps({"data": str(data), "split": split, "all": rates(total),
                  "by_intent": {k: rates(v) for k, v in sorted(by.items(), key=lambda kv: -kv[1]["questions"])}},
                 indent=1))
