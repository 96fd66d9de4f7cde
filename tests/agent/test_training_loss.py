"""The per-role head slices give exactly the serving distribution's loss (a masked full-vocab softmax)."""
from __future__ import annotations

import torch

from agent.training.loss import role_heads, stream_losses
from think.checkpoint import load_checkpoint


def _masked_full_ce(logits, targets, layout, offset=0):
    """Reference: full-vocab logits, every id the position does not allow set to -inf (what the sampler does)."""
    out = torch.zeros(targets.shape)
    for i in range(targets.shape[1]):
        mask = torch.from_numpy(layout.allowed_mask(i + offset))
        row = logits[:, i, : layout.vocab_size].masked_fill(~mask, float("-inf"))
        out[:, i] = torch.nn.functional.cross_entropy(row, targets[:, i], reduction="none")
    return out


def _valid_ids(layout, n, batch, gen, offset=0):
    ids = torch.empty(batch, n, dtype=torch.long)
    for i in range(n):
        ranges = layout.allowed_range(i + offset)
        choice = [t for lo, hi in ranges for t in range(lo, hi)]
        ids[:, i] = torch.tensor(choice)[torch.randint(len(choice), (batch,), generator=gen)]
    return ids


def test_sliced_head_loss_equals_the_masked_full_vocab_loss(nano_model_dir):
    loaded = load_checkpoint(nano_model_dir)
    model, layout = loaded.model.eval(), loaded.layout
    gen = torch.Generator().manual_seed(0)
    slot = layout.slot_size
    x = _valid_ids(layout, 3 * slot, 2, gen)  # targets = the next ids, starting at slot position 1
    inp, targets = x[:, :-1], x[:, 1:]
    weights = torch.rand(targets.shape, generator=gen)
    pos = (torch.arange(targets.shape[1]) + 1) % slot
    weights[:, pos < layout.q_in] = 0.0  # user ids are context only
    with torch.no_grad():
        hidden = model.model(input_ids=inp).last_hidden_state
        logits = model(input_ids=inp).logits
        loss, parts = stream_losses(hidden, model.get_output_embeddings().weight, targets, weights, layout,
                                    offset_in_slot=1)
    ref = _masked_full_ce(logits, targets, layout, offset=1)
    ref_loss = (ref * weights).sum() / weights.sum()
    assert torch.isfinite(loss)
    assert abs(float(loss) - float(ref_loss)) < 1e-4
    text_cols = pos == layout.q_in
    assert abs(parts["text"] - float(ref[:, text_cols].mean())) < 1e-3
    assert set(parts) == {h.name for h in role_heads(layout)}


def test_padding_targets_outside_a_role_range_do_not_poison_the_loss(nano_model_dir):
    loaded = load_checkpoint(nano_model_dir)
    model, layout = loaded.model.eval(), loaded.layout
    gen = torch.Generator().manual_seed(1)
    x = _valid_ids(layout, 2 * layout.slot_size + 1, 1, gen)
    targets = x[:, 1:].clone()
    weights = torch.ones(targets.shape)
    targets[:, -layout.slot_size:] = layout.pad_id  # a short window padded at the end of a batch
    weights[:, -layout.slot_size:] = 0.0
    with torch.no_grad():
        hidden = model.model(input_ids=x[:, :-1]).last_hidden_state
        loss, _ = stream_losses(hidden, model.get_output_embeddings().weight, targets, weights, layout,
                                offset_in_slot=1)
    assert torch.isfinite(loss) and float(loss) > 0


def test_the_text_head_never_trains_the_session_and_system_specials(nano_model_dir):
    layout = load_checkpoint(nano_model_dir).layout
    text = next(h for h in role_heads(layout) if h.name == "text")
    banned = {text.lo + b for b in text.banned}
    assert banned == {layout.special("session_start"), layout.special("system_start"), layout.special("system_end")}
    assert [h.name for h in role_heads(layout)] == ["text"] + [f"audio{k}" for k in range(layout.q_out)]
