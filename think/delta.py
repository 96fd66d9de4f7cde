"""A speech base as a small delta on the base LLM it was made from, and the rebuild from that delta.

A speech base (``duplex train --preset speech-align`` then ``speech-duplex``) differs from its text LLM in
only two ways: the embedding rows of the layout's new ids, and the LoRA updates merged into the attention
and MLP projections (two stages of rank r: a weight update of rank <= 2r). So it ships as those rows plus
each projection's update in factored form ``up @ down`` (found by SVD of ``W_speech - W_base``, truncated
where the rest is below ``tol`` of the update's own norm), not as a copy of the base. Rebuilding needs the
same base, checked by a fingerprint of its weights::

    duplex model delta runs/smol/speech-base runs/smol/delta --base smollm2
    duplex model init runs/smol/rebuilt --base smollm2 --delta runs/smol/delta

A delta directory holds ``speech_delta.safetensors`` (tensors ``<name>:rows`` ``(n, hidden)`` from row
``row_start`` (and ``<name>:heard_shift`` ``(hidden,)`` for a heard range kept as "text twin + one vector"),
``<name>:up`` ``(out, k)`` / ``<name>:down`` ``(k, in)``, ``<name>:full`` for small tensors),
``speech_delta.json`` (what each entry is, the base fingerprint, the rebuild check), and the speech base's
``config.json``, ``duplex_layout.json``, chat template and provenance files.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

DELTA_WEIGHTS = "speech_delta.safetensors"
DELTA_INDEX = "speech_delta.json"
# Files of the speech base that travel with its delta (the tokenizer comes from the base itself).
CARRIED = ("config.json", "generation_config.json", "duplex_layout.json", "chat_template.jinja", "duplex_init.json",
           "train_config.json", "final_metrics.json", "loss.png", "MODEL_CARD.md")
SMALL = 65536  # tensors up to this many elements are stored whole when they change (norms, biases)


def base_fingerprint(model: Any) -> str:
    """sha256 over the base's float32 weights (names, shapes, bytes; tied tensors once), in name order."""
    import torch

    h = hashlib.sha256()
    seen: set[int] = set()
    for name, t in sorted(model.state_dict().items()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _unique(state: dict) -> dict:
    """The state dict without the second name of tied tensors (lm_head = embed_tokens)."""
    out, seen = {}, set()
    for name, t in state.items():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[name] = t
    return out


def _low_rank(diff: Any, tol: float, max_rank: int, floor: float) -> tuple[Any, Any, float]:
    """``diff`` ``(out, in)`` ~ ``up @ down`` at the smallest rank whose residual is <= ``tol`` of ``|diff|``
    or <= ``floor`` (absolute).

    Merged LoRA updates are exactly low-rank, so their spectrum drops by orders of magnitude after rank
    2r; a residual judged against the weight itself would drop small (early-training) updates whole. The
    floor is the weight's own float32 rounding (adding the update rounded every element), which is
    full-rank: without it a small update would look like a full fine-tune."""
    import torch

    u, s, vh = torch.linalg.svd(diff.to(torch.float64), full_matrices=False)
    tail = torch.sqrt(torch.flip(torch.cumsum(torch.flip(s ** 2, [0]), 0), [0]))  # tail[k] = residual at rank k
    tail = torch.cat([tail, torch.zeros(1, dtype=tail.dtype)])
    norm = float(tail[0])
    ok = (tail <= max(tol * norm, floor)).nonzero()
    k = int(ok[0]) if len(ok) else len(s)
    if k > max_rank:
        raise ValueError(f"needs rank {k} (> --max-rank {max_rank}) to stay within tol={tol} of itself")
    up = (u[:, :k] * s[:k]).to(torch.float32)
    down = vh[:k].to(torch.float32)
    return up, down, float(tail[k] / max(norm, 1e-30))


def make_delta(model_dir: str | Path, out_dir: str | Path, base: str | Path, tol: float = 1e-3, max_rank: int = 128,
               dtype: str = "float16") -> dict:
    """Write the delta of speech base ``model_dir`` on ``base`` into ``out_dir``; returns the index."""
    import torch
    from safetensors.torch import save_file

    from think.base_llm import load_base_llm
    from think.checkpoint import load_checkpoint

    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"--dtype must be bfloat16, float16 or float32, got {dtype!r}.")
    speech = load_checkpoint(model_dir)
    base_model, _, source = load_base_llm(base)
    text_vocab = base_model.get_input_embeddings().num_embeddings
    if speech.layout.text_vocab_size != text_vocab:
        raise ValueError(f"{model_dir} was not made from {base}: its layout has {speech.layout.text_vocab_size} text "
                         f"ids, the base {text_vocab}.")
    base_state, state = base_model.state_dict(), _unique(speech.model.state_dict())
    emb_ptr = speech.model.get_input_embeddings().weight.data_ptr()
    emb_name = next(n for n, t in state.items() if t.data_ptr() == emb_ptr)
    store = getattr(torch, dtype)

    def stored(t: Any) -> Any:  # float16 keeps 3 more mantissa bits than bfloat16; float32 where it overflows
        c = t.to(store).contiguous()
        return c if bool(torch.isfinite(c).all()) else t.to(torch.float32).contiguous()

    tensors: dict[str, Any] = {}
    entries: dict[str, dict] = {}
    for name, w in state.items():
        w = w.detach().to(torch.float32)
        if name not in base_state:
            raise ValueError(f"{model_dir} has a tensor {name} that {base} lacks; it is not a speech base of it.")
        w0 = base_state[name].detach().to(torch.float32)
        if name == emb_name:
            if w.shape[1] != w0.shape[1] or w.shape[0] < w0.shape[0]:
                raise ValueError(f"{name} is {tuple(w.shape)} in {model_dir}, {tuple(w0.shape)} in the base.")
            if not torch.equal(w[:text_vocab], w0):
                raise ValueError(f"The text rows of {name} changed in {model_dir}; a speech base keeps them as the "
                                 f"base's (only the new ids' rows train), so it cannot be stored as a delta.")
            entries[name] = _rows_entry(name, w, speech.layout, tensors, stored)
            continue
        if w.shape != w0.shape:
            raise ValueError(f"{name} is {tuple(w.shape)} in {model_dir} but {tuple(w0.shape)} in {base}.")
        diff = w - w0
        if not torch.any(diff):
            continue
        if w.dim() != 2 or w.numel() <= SMALL:
            tensors[f"{name}:full"] = stored(w)
            entries[name] = {"kind": "full"}
            continue
        try:
            # 1e-6 of the weight: ~30x the float32 rounding of its elements, ~500x below float16 storage's error
            up, down, err = _low_rank(diff, tol, max_rank, floor=1e-6 * float(torch.linalg.norm(w)))
        except ValueError as e:
            raise ValueError(f"{name}: the update {e}; a full fine-tune is no speech base delta (ship the model "
                             f"itself, or raise --max-rank / --tol).") from None
        tensors[f"{name}:up"], tensors[f"{name}:down"] = stored(up), stored(down)
        entries[name] = {"kind": "low_rank", "rank": int(up.shape[1]), "residual": round(err, 8)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / DELTA_WEIGHTS))
    for f in CARRIED:
        if (Path(model_dir) / f).is_file():
            shutil.copy(Path(model_dir) / f, out / f)
    ranks = [e["rank"] for e in entries.values() if e["kind"] == "low_rank"]
    index = {"base": str(base), "base_source": source, "base_fingerprint": base_fingerprint(base_model),
             "text_vocab_size": text_vocab, "dtype": dtype, "tol": tol, "entries": entries,
             "low_rank_tensors": len(ranks), "max_rank": max(ranks, default=0),
             "bytes": (out / DELTA_WEIGHTS).stat().st_size}
    rebuilt = apply_delta(out, base_model, index, tensors)
    index["check"] = compare_logits(speech.model, rebuilt, speech.layout.vocab_size)
    (out / DELTA_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return index


def _rows_entry(name: str, w: Any, layout: Any, tensors: dict, stored: Any) -> dict:
    """The embedding's new rows ``w[text_vocab:]`` as delta tensors. A heard range whose rows are all "text
    twin + one shared vector" (how a speech base trains it, ``agent/training/train.py``) is stored as that
    vector, ``<name>:heard_shift`` ``(hidden,)``, not as 49,152 rows."""
    import torch

    text_vocab = layout.text_vocab_size
    entry: dict = {"kind": "rows", "row_start": text_vocab, "rows": int(w.shape[0] - text_vocab)}
    if layout.heard_text:
        heard = slice(layout.heard_offset, layout.heard_offset + text_vocab)
        offsets = w[heard] - w[:text_vocab]
        shift = offsets.mean(0)
        spread = float((offsets - shift).abs().max())
        # float32 rounding drifts the rows apart by ~1e-6 over thousands of steps; below float16's own
        # rounding of the rows (~5e-4 of their size) the difference is not one anything could store
        if spread <= 1e-4 * float(w[heard].abs().max()):
            tensors[f"{name}:heard_shift"] = stored(shift)
            tensors[f"{name}:rows"] = stored(torch.cat([w[text_vocab:heard.start], w[heard.stop:]]))
            entry.update(heard_start=heard.start, heard_rows=text_vocab, heard_spread=spread)
            return entry
    tensors[f"{name}:rows"] = stored(w[text_vocab:])
    return entry


def load_delta_index(delta_dir: str | Path) -> dict:
    path = Path(delta_dir) / DELTA_INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{delta_dir} is not a speech base delta (no {DELTA_INDEX}); make one with "
                                f"`duplex model delta`.")
    return json.loads(path.read_text())


def check_base(base_model: Any, index: dict, base: str | Path) -> None:
    """Refuse a base whose weights are not the ones the delta was made on."""
    found = base_fingerprint(base_model)
    if found != index["base_fingerprint"]:
        raise ValueError(f"{base} is not the base this delta was made on (weights fingerprint {found[:12]}..., the "
                         f"delta needs {index['base_fingerprint'][:12]}... from {index['base_source']}).")


def apply_delta(delta_dir: str | Path, base_model: Any, index: dict | None = None,
                tensors: dict | None = None) -> Any:
    """The speech base rebuilt (a float32 model) from a loaded, checked base model and the delta."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    delta_dir = Path(delta_dir)
    index = index if index is not None else load_delta_index(delta_dir)
    tensors = tensors if tensors is not None else load_file(str(delta_dir / DELTA_WEIGHTS))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(delta_dir, local_files_only=True),
                                             dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).clone() for k, v in base_model.state_dict().items()}
    for name, entry in index["entries"].items():
        if entry["kind"] == "rows":
            start, rows = entry["row_start"], tensors[f"{name}:rows"].to(torch.float32)
            if "heard_start" in entry:  # heard row = text twin + the shared vector
                heard = state[name][:entry["heard_rows"]] + tensors[f"{name}:heard_shift"].to(torch.float32)
                before = entry["heard_start"] - start
                rows = torch.cat([rows[:before], heard, rows[before:]])
            state[name] = torch.cat([state[name][:start], rows])
        elif entry["kind"] == "full":
            state[name] = tensors[f"{name}:full"].to(torch.float32)
        else:
            up, down = tensors[f"{name}:up"].to(torch.float32), tensors[f"{name}:down"].to(torch.float32)
            state[name] = state[name] + up @ down
    own = _unique(model.state_dict())  # a tied head is loaded through the embedding it shares
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    model.tie_weights()
    return model.eval()


def compare_logits(reference: Any, rebuilt: Any, vocab: int, ids: int = 256, seed: int = 0) -> dict:
    """Max |logit difference| and argmax agreement of two models on one random id sequence."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (1, ids), generator=g)
    with torch.no_grad():
        a = reference(x).logits[0, :, :vocab].float()
        b = rebuilt(x).logits[0, :, :vocab].float()
    return {"ids": ids, "max_abs_logit_diff": round(float((a - b).abs().max()), 6),
            "logit_scale": round(float(a.abs().max()), 4),
            "argmax_agreement": round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 4)}


def rebuild(delta_dir: str | Path, out_dir: str | Path, base: str | Path) -> Path:
    """``duplex model init OUT --base B --delta D``: write the rebuilt speech base as a checkpoint directory."""
    from think.base_llm import CHAT_TEMPLATE_FILE, load_base_llm
    from think.tokenizer import TOKENIZER_FILE

    delta_dir, out = Path(delta_dir), Path(out_dir)
    index = load_delta_index(delta_dir)
    base_model, tokenizer, _ = load_base_llm(base)
    check_base(base_model, index, base)
    model = apply_delta(delta_dir, base_model, index)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save(str(out / TOKENIZER_FILE))
    for f in CARRIED:
        if f != "config.json" and (delta_dir / f).is_file():
            shutil.copy(delta_dir / f, out / f)
    if not (out / CHAT_TEMPLATE_FILE).is_file() and getattr(tokenizer, "chat_template", None):
        (out / CHAT_TEMPLATE_FILE).write_text(tokenizer.chat_template)
    info = json.loads((out / "duplex_init.json").read_text()) if (out / "duplex_init.json").is_file() else {}
    info["rebuilt_from_delta"] = str(delta_dir)
    (out / "duplex_init.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
