"""CLI for the training pipeline: ``duplex data tokenize`` and ``duplex train``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.training.mic_paths import DEFAULT_MIC_PATHS


def cmd_tokenize(args: argparse.Namespace) -> int:
    from agent.models import codec_for_layout, codec_from_preset, build_layout
    from agent.training.tokenize import write_shards
    from think.layout import DuplexLayout
    from think.tokenizer import default_tokenizer, load_tokenizer

    if args.model:
        layout = DuplexLayout.load(args.model)
        tokenizer = load_tokenizer(args.model)
        codec = codec_for_layout(layout, args.codec_weights)
    else:
        codec, q_in, q_out = codec_from_preset(args.codec, args.codec_weights)
        tokenizer = default_tokenizer()
        layout = build_layout(codec, tokenizer.get_vocab_size(), q_in, q_out, args.text_lead)
    if args.text_conversations < 0:
        raise ValueError(f"--text-conversations must be >= 0, got {args.text_conversations}.")
    template = None
    if args.text_conversations:
        from agent.training.textdata import chat_template

        template = chat_template(args.model) if args.model else None
    index = write_shards(args.data, args.out, layout, codec, tokenizer, shard_size=args.shard_size,
                         progress=not args.quiet, align=not args.no_align, text_conversations=args.text_conversations,
                         chat_template=template, text_max_ids=args.text_max_ids,
                         mic_paths=tuple(x.strip() for x in args.mic_paths.split(",") if x.strip()),
                         heard_recognizer=args.heard_recognizer, heard_during_agent_turn=args.heard_during_agent_turn)
    print(f"wrote {len(index['shards'])} shards to {args.out}: " + ", ".join(
        f"{split} {t['dialogues']} dialogues / {t['frames']} frames" for split, t in sorted(index["totals"].items())))
    if index.get("align_shards"):
        print("alignment sequences: " + ", ".join(f"{s['split']} {s['listen']} listening / {s['speak']} speaking"
                                                  for s in index["align_shards"]))
    if index.get("text_shards"):
        print("text-only chats: " + ", ".join(f"{s['split']} {s['sequences']}" for s in index["text_shards"]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from agent.config import apply_overrides, check_types, from_dict, load_yaml
    from agent.training.train import TrainConfig, train

    data = load_yaml(args.preset if args.preset.endswith(".yaml") else f"train-{args.preset}")
    for key in ("shards", "out", "init", "steps", "threads"):
        value = getattr(args, key)
        if value is not None:
            data[key] = str(value) if key in ("shards", "out", "init") else value
    data = apply_overrides(data, args.overrides)
    # --set steps=abc: named here, not a TypeError inside the checks. check_types reads list[str] / dict[str, float]
    # as "text", so those two are left to TrainConfig's own checks.
    check_types(TrainConfig, {k: v for k, v in data.items() if k not in ("lora_targets", "mix")})
    cfg = from_dict(TrainConfig, data)
    if not cfg.shards or not cfg.out:
        raise ValueError("--shards and --out are required.")
    out = Path(cfg.out)
    if not args.resume and not args.force and any((out / f).is_file() for f in ("last/trainer_state.pt",
                                                                                  "final_metrics.json")):
        # Starting over replaces the run's resumable state at its first save and its weights at the end.
        raise FileExistsError(f"{out} already holds a training run; pass --resume to continue it, --force to "
                              "start it over, or another --out.")
    final = train(cfg, resume=args.resume, progress=not args.quiet)
    print(json.dumps(final, indent=2))
    print(f"wrote {Path(cfg.out)} ({'adapter/' if cfg.mode == 'lora' else 'checkpoint'}, metrics.jsonl, loss.png)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from agent.cli import _session_config
    from agent.evaluate import EvalConfig, run_eval

    cfg = EvalConfig(data=args.data, split=args.split, limit=args.limit, asr=args.asr, mic_path=args.mic_path,
                     device=args.device, reference=args.reference)
    result = run_eval(cfg, args.model, args.out, _session_config(args),
                      progress=not args.quiet)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {Path(args.out) / 'eval.json'} and eval.png")
    return 0


def add_commands(sub: argparse._SubParsersAction, data_group: argparse._SubParsersAction | None = None) -> None:
    """Register ``data tokenize`` (in the ``data`` group) and ``train``."""
    p = data_group.add_parser("tokenize", help="dialogues -> the layout's token shards")
    p.add_argument("--data", required=True, help="directory made by `duplex data synth`")
    p.add_argument("--out", required=True, help="shard directory to write")
    p.add_argument("--model", help="take layout and tokenizer from this checkpoint directory")
    p.add_argument("--codec", default="codec2", help="codec preset when no --model is given")
    p.add_argument("--codec-weights", help="local weights for neural codecs")
    p.add_argument("--text-lead", type=int, default=1, help="δ: frames the text leads the audio")
    p.add_argument("--shard-size", type=int, default=256, help="dialogues per shard")
    p.add_argument("--no-align", action="store_true",
                   help="skip the per-turn listening/speaking alignment sequences (align-*.npz, speech-base stage a)")
    p.add_argument("--text-conversations", type=int, default=0, metavar="N",
                   help="also write N text-only chats from chitchat-dataset (text-*.npz), rendered with the "
                        "--model checkpoint's chat template, to keep a base LLM's chat ability (default 0)")
    p.add_argument("--text-max-ids", type=int, default=512, help="longest text-only chat in ids (longer ones are cut)")
    p.add_argument("--mic-paths", default=",".join(DEFAULT_MIC_PATHS), metavar="P1,P2",
                   help="live input paths the user channel is drawn through, one per dialogue (default: all of "
                        + ", ".join(DEFAULT_MIC_PATHS) + "; soxr-hq alone = the offline encoding)")
    p.add_argument("--heard-recognizer", metavar="DIR",
                   help="heard-text models: the heard ids are what this recogniser (duplex recognizer train) writes "
                        "live, with its errors and timing, instead of the script's words (agent/heard.py)")
    p.add_argument("--heard-during-agent-turn", action="store_true",
                   help="with --heard-recognizer: write the user's words inside the agent's turns too (for "
                        "sessions run with --set heard.during_agent_turn=true)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("train", help="train a model (from scratch), a speech base from a base LLM, or a LoRA "
                                     "adapter on token shards")
    p.add_argument("--preset", default="tiny",
                   help="train preset (agent/presets/train-*.yaml) or a YAML file: smoke, tiny (from scratch); "
                        "speech-align, speech-duplex (+ -smoke): speech-base stages a and b on a `model init --base` "
                        "checkpoint, merged into a full checkpoint; lora: a vLLM-servable adapter")
    p.add_argument("--shards", help="directory made by `duplex data tokenize`")
    p.add_argument("--out", help="output directory")
    p.add_argument("--init", help="checkpoint to start from (required for lora and the speech-* presets)")
    p.add_argument("--steps", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last/")
    p.add_argument("--force", action="store_true", help="start over in an OUT that already holds a run (replaces it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score held-out dialogues through the streaming loop (duplex behaviour, answers)")
    p.add_argument("--data", required=True, help="directory made by `duplex data synth`")
    p.add_argument("--out", required=True, help="directory for eval.json and eval.png")
    p.add_argument("--model", help="checkpoint directory (default: the embedded default)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=0, help="at most this many dialogues")
    p.add_argument("--asr", action="store_true", help="also score intelligibility with Whisper tiny.en ([eval] extra)")
    p.add_argument("--reference", action="store_true",
                   help="score the dialogues' own agent channel instead of a model: the best each measure can be "
                        "on this data (the model's layout sets only the frame length)")
    p.add_argument("--mic-path", default="", metavar="PATH",
                   help="take the user channel the way a live input does first (agent/training/mic_paths.py), e.g. "
                        "browser-apm for the page; default: the session resamples the WAV")
    p.add_argument("--device", default="auto", help="auto (CUDA when torch sees one), cpu, cuda or cuda:N")
    p.add_argument("--config", help="session config file or preset (default: greedy decoding is NOT implied)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)
