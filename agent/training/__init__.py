"""Training: dialogues -> token shards (``tokenize``), the trainer (``train``), adapters (LoRA)."""
