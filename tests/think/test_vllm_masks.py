"""The vLLM processor's heard-id fill (think/vllm_masks.py): the listener's id drawn where PAD would have been.

Runs without vLLM: only the processor's arithmetic is checked here; the engine runs it in test_vllm_backend.py.
"""
from __future__ import annotations

import torch

from think.vllm_masks import DuplexSlotProcessor, slot_spec


def _processor(vocab: int) -> DuplexSlotProcessor:
    proc = DuplexSlotProcessor.__new__(DuplexSlotProcessor)  # no engine: only apply() is exercised
    proc.device, proc.vocab, proc.requests, proc._compiled = torch.device("cpu"), vocab, {}, {}
    return proc


def test_a_heard_id_takes_the_probability_pad_would_have_had():
    vocab, pad, heard = 8, 1, 6
    spec = slot_spec([[(0, 4)], [(4, 8)]], [1.0, 1.0], [0, 0])
    proc = _processor(vocab)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, 3.0, 1.0, 0.0, 0.0]] * 2)
    proc.requests = {0: (proc._compile(spec), [], None), 1: (proc._compile(spec), [], [pad, heard])}
    out = torch.softmax(proc.apply(logits.clone()), -1)
    assert out[0, heard] == 0 and out[0, pad] > 0.1  # no fill: the heard range stays barred
    assert out[1, pad] == 0 and torch.isclose(out[1, heard], out[0, pad])  # fill: PAD's share, on the heard id
    assert torch.allclose(out[1, [0, 2, 3]], out[0, [0, 2, 3]])  # the words keep theirs
    proc.requests = {0: (proc._compile(spec), [7], [pad, heard])}  # an audio position: no fill there
    assert torch.equal(proc.apply(logits[:1].clone())[0, 4:], logits[0, 4:])
