"""A LoRA adapter that really changes a model's outputs, for serving tests (PEFT starts B at zero)."""
from __future__ import annotations

from pathlib import Path

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_lora(model_dir: Path, out: Path, seed: int, scale: float, rank: int = 8,
                targets: list[str] | None = None, save: bool = True):
    """LoRA on ``targets`` of ``model_dir`` with B drawn as N(0, scale²); saved to ``out`` (returned) or,
    with ``save=False``, the PEFT model itself."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=list(targets or ALL_PROJECTIONS))
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    pm.eval()
    if not save:
        return pm
    pm.save_pretrained(out)
    return out
