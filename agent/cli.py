"""The ``duplex`` command line.

    duplex chat --in question.wav --out dialogue.wav [--model DIR] [--realtime] [--tail auto|SECONDS]
    duplex model init OUT_DIR [--preset tiny | --base LLM_DIR [--delta DELTA_DIR]] [--codec codec2]
    duplex model export SRC OUT_DIR [--dtype bfloat16]
    duplex model delta SPEECH_BASE OUT_DIR --base LLM [--dtype float16]
    duplex doctor
    duplex bench step [--model DIR] [--frames 300]
    duplex bench train [--preset tiny] [--window-frames 78] [--batch-size 8]
    duplex bench serve --backend transformers|vllm --sessions N [--sweep] [--model DIR]
    duplex serve [--model DIR | --model NAME=DIR ...] [--host 127.0.0.1] [--port 8765] [--token SECRET]
    duplex demo [--model DIR] [--port 7860]
    duplex data synth --out DIR --count N [--preset data-smoke|data-tiny] [--seed S] [--workers 1]
    duplex data tokenize --data DIALOGUES --out SHARDS [--model DIR]
    duplex train --preset tiny|lora|smoke --shards SHARDS --out DIR [--init DIR] [--resume]

Errors a user can fix (missing file, bad audio, bad setting) print one sentence and exit with 2.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path


def _add_session_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file or preset name (agent/presets: default, half-duplex, greedy).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set sampling.text_temperature=0.5 (repeatable)")
    p.add_argument("--system-prompt", help="text placed before the conversation")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--echo-guard", action="store_true", help="half-duplex fallback: ignore the user while the agent talks")
    p.add_argument("--no-barge-in", action="store_true", help="never cut the agent when the user talks over it")


def _session_config(args: argparse.Namespace):
    from agent.config import SessionConfig, apply_overrides, check_types, from_dict, load_yaml

    overrides = list(args.overrides)
    # The shortcut flags are optional: `duplex eval` has only --config and --set.
    if getattr(args, "system_prompt", None) is not None:
        overrides.append(f"system_prompt={json.dumps(args.system_prompt)}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"sampling.seed={args.seed}")
    if getattr(args, "echo_guard", False):
        overrides.append("policy.echo_guard=true")
    if getattr(args, "no_barge_in", False):
        overrides.append("policy.barge_in=false")
    overrides = [_typed_override(item) for item in overrides]
    data = apply_overrides(load_yaml(args.config, kind="session") if args.config else {}, overrides)
    check_types(SessionConfig, data)  # names a wrong-typed setting (e.g. seed: 1.5) before a component trips on it
    try:
        config = from_dict(SessionConfig, data)
    except TypeError as e:  # a --config file value of the wrong type reached a component's checks
        raise ValueError(f"A setting in {args.config or 'the configuration'} has the wrong type ({e}).") from e
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):  # a section given a plain value in a --config file
        if dataclasses.is_dataclass(hints[f.name]) and not isinstance(getattr(config, f.name), hints[f.name]):
            raise ValueError(f"{f.name} in {args.config} must be a section of settings (a mapping), "
                             f"got {getattr(config, f.name)!r}.")
    return config


def _typed_override(item: str, root: type | None = None) -> str:
    """Check a ``key.sub=value`` override's value against the setting's type in ``root`` (default:
    SessionConfig); returns the override (a text setting gets its value quoted, so ``--set
    system_prompt=42`` means the text "42").

    Unknown keys pass through: ``resolve_session_config`` names them with the known ones."""
    import dataclasses
    import typing

    from agent.config import SessionConfig, kind_error, parse_scalar, plain_kinds

    if "=" not in item:
        return item
    key, raw = item.split("=", 1)
    cls: typing.Any = root or SessionConfig
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        if not (dataclasses.is_dataclass(cls) and part in {f.name for f in dataclasses.fields(cls)}):
            return item
        hint = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(hint) and i == len(parts) - 1:
            raise ValueError(f"--set {item}: {key} is a section; set one of its keys, e.g. "
                             f"{key}.{dataclasses.fields(hint)[0].name}=VALUE.")
        cls = hint
    value = parse_scalar(raw)
    allowed = plain_kinds(cls)
    if allowed is None:
        return item
    if str in allowed:  # text, unless it is a value the setting also takes (audio.latency=0.05, null)
        others = tuple(t for t in allowed if t is not str)
        fits = isinstance(value, str) or (others and kind_error(key, value, others) is None)
        return item if fits else f"{key}={json.dumps(raw)}"
    error = kind_error(key, value, allowed)
    if error:
        raise ValueError(f"--set {item}: {error}")
    return item


def _tail_seconds(value: str) -> float | None:
    """``--tail``: 'auto' -> None; otherwise seconds (range checked by ChatConfig with a clear message)."""
    if value.strip().lower() == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--tail must be 'auto' or a number of seconds >= 0, got {value!r}.") from None


def cmd_chat(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agent.chat import ChatConfig, run_chat

    cfg = ChatConfig(input=Path(args.input), output=Path(args.output), model=Path(args.model) if args.model else None,
                     codec_weights=Path(args.codec_weights) if args.codec_weights else None, realtime=args.realtime,
                     tail_seconds=_tail_seconds(args.tail), max_seconds=args.max_seconds, out_rate=args.out_rate,
                     engine=args.engine, threads=args.threads)
    session_config = _session_config(args)
    bar = tqdm(total=0, unit="frame", disable=args.quiet, desc="chat", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def announce(msg: str) -> None:
        print(f"duplex: {msg}", file=sys.stderr)

    try:
        summary = asyncio.run(run_chat(cfg, session_config, progress=progress, announce=announce))
    finally:
        bar.close()
    rtf = summary.get("real_time_factor_p95")
    print(f"wrote {cfg.output} ({summary['output_seconds']:.2f} s, {summary['frames']} frames, "
          f"step p95 {summary['frame_total_ms'].get('p95', 0):.1f} ms = RTF {rtf}, turn latency median "
          f"{summary['turn_latency_ms'].get('p50', 'n/a')} ms)")
    print(f"transcript: {cfg.output.with_suffix('.txt')}; latency report: "
          f"{cfg.output.with_name(cfg.output.stem + '.latency.json')}")
    if summary.get("nonfinite_input_samples"):
        print(f"note: {summary['nonfinite_input_samples']} input samples were NaN or infinite and were heard as "
              f"silence.")
    if summary.get("agent_speaking_at_end"):
        print("note: the agent was still speaking when the output ended; pass a longer --tail (seconds) to hear "
              "the rest.")
    return 0


def cmd_model_init(args: argparse.Namespace) -> int:
    from agent.models import init_model

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} is not empty; pass --force to overwrite it.")
    try:
        overrides = json.loads(args.model_json) if args.model_json else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--model-json is not valid JSON ({e}); e.g. --model-json '{{\"layers\": 6}}'.") from e
    if args.heard_text_from:
        from think.checkpoint import add_heard_text

        path = add_heard_text(args.heard_text_from, out)
    elif args.delta:
        from think.delta import rebuild

        if not args.base:
            raise ValueError("--delta needs --base: the base LLM the delta was made on (e.g. --base smollm2).")
        path = rebuild(args.delta, out, args.base)
    else:
        path = init_model(out, preset=args.preset, codec=args.codec, base=args.base, q_in=args.q_in,
                          q_out=args.q_out, text_lead=args.text_lead, seed=args.seed,
                          codec_weights=args.codec_weights, model_overrides=overrides,
                          heard_text=args.heard_text)
    info = json.loads((path / "duplex_init.json").read_text())
    layout = json.loads((path / "duplex_layout.json").read_text())
    print(f"wrote {path}: {info['parameters'] / 1e6:.2f} M parameters, vocabulary {layout['vocab_size']} ids, "
          f"slot {layout['slot_size']} ids per {layout['codec']['frame_samples'] * 1000 / layout['codec']['sample_rate']:.0f} ms frame")
    return 0


def cmd_model_delta(args: argparse.Namespace) -> int:
    from think.delta import make_delta

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} is not empty; pass --force to overwrite it.")
    if not (args.tol > 0 and args.max_rank >= 1):
        raise ValueError(f"--tol must be > 0 and --max-rank >= 1, got {args.tol} and {args.max_rank}.")
    index = make_delta(args.src, out, args.base, tol=args.tol, max_rank=args.max_rank, dtype=args.dtype)
    check = index["check"]
    print(f"wrote {out}: {index['bytes'] / 1e6:.1f} MB ({index['low_rank_tensors']} low-rank updates up to rank "
          f"{index['max_rank']}, new rows, {index['dtype']}); rebuilt vs {args.src}: max |logit diff| "
          f"{check['max_abs_logit_diff']} (logits up to {check['logit_scale']}), argmax agreement "
          f"{check['argmax_agreement']:.2%}")
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    from agent.models import export_model

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} is not empty; pass --force to overwrite it.")
    path = export_model(args.src, out, dtype=args.dtype)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"wrote {path}: {size / 1e6:.1f} MB ({args.dtype} weights)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.doctor import main

    return main()


def cmd_bench_step(args: argparse.Namespace) -> int:
    from agent.bench import bench_step

    result = bench_step(model=args.model, preset=args.preset, codec=args.codec, frames=args.frames,
                        warmup=args.warmup, engine=args.engine, threads=args.threads, device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from agent.bench_train import bench_train

    result = bench_train(preset=args.preset, codec=args.codec, window_frames=args.window_frames,
                         batch_size=args.batch_size, steps=args.steps, threads=args.threads, device=args.device,
                         model=args.model)
    print(json.dumps(result, indent=2))
    return 0


def _add_bench_model_flags(p: argparse.ArgumentParser, preset: str = "tiny") -> None:
    p.add_argument("--model", help="checkpoint directory (default: a random model of --preset)")
    p.add_argument("--preset", default=preset)
    p.add_argument("--codec", default="codec2")


def _server_setup(args: argparse.Namespace):
    import os

    from agent.server import ServerConfig, build_server

    def announce(msg: str) -> None:
        print(f"duplex: {msg}", file=sys.stderr)

    token = args.token if args.token is not None else (os.environ.get("DUPLEX_TOKEN") or None)
    config = ServerConfig(host=args.host, port=args.port, token=token, max_connections=args.max_connections,
                          max_message_bytes=args.max_message_bytes)
    server = build_server(args.model, config, _session_config(args), engine=args.engine, threads=args.threads,
                          codec_weights=args.codec_weights, adapters=args.adapter, announce=announce)
    return server, announce


def cmd_serve(args: argparse.Namespace) -> int:
    from agent.server import serve

    server, announce = _server_setup(args)
    serve(server, announce=announce)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.server import serve
    from demo.app import create_demo_app

    server, announce = _server_setup(args)
    app = create_demo_app(server)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host

    def banner(msg: str) -> None:
        announce(msg)
        announce(f"open http://{host}:{args.port}/ in a browser (Chrome/Firefox), press Start and talk")

    serve(server, app=app, announce=banner)
    return 0


def _add_server_flags(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--model", action="append", metavar="DIR|NAME=DIR",
                   help="checkpoint directory, repeatable (first = default; none = the embedded default model)")
    p.add_argument("--adapter", action="append", metavar="NAME=DIR", help="LoRA adapter a client may pick (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (beyond loopback needs --token)")
    p.add_argument("--port", type=int, default=port, help=f"TCP port (default {port})")
    p.add_argument("--token", help="shared secret clients must send (default: $DUPLEX_TOKEN; none = no auth)")
    p.add_argument("--max-connections", type=int, default=8, help="concurrent conversations (default 8)")
    p.add_argument("--max-message-bytes", type=int, default=1 << 20, help="largest client message (default 1 MiB)")
    p.add_argument("--codec-weights", help="local weights directory for neural codecs (mimi, snac)")
    p.add_argument("--engine", default="auto", choices=["auto", "lean", "hf"], help="transformers backend engine")
    p.add_argument("--threads", type=int, help="torch threads")
    _add_session_flags(p)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from agent.dialogue.synth import synth
    from agent.dialogue.tts import MissingTTS

    try:
        m = synth(args.out, count=args.count, preset=args.preset, seed=args.seed, workers=args.workers,
                  progress=not args.quiet, announce=lambda msg: print(f"duplex: {msg}", file=sys.stderr),
                  splits=[s for arg in args.split for s in arg.split(",") if s] if args.split else None)
    except MissingTTS as e:
        print(f"duplex: error: {e}", file=sys.stderr)
        return 2
    per = ", ".join(f"{k} {v['dialogues']} ({v['duration_s'] / 60:.1f} min)" for k, v in m["splits"].items())
    print(f"wrote {m['count']} dialogues to {args.out}: {per}; manifest {Path(args.out) / 'manifest.json'}")
    return 0


def _add_data_synth(data_group: argparse._SubParsersAction) -> None:
    p = data_group.add_parser("synth", help="synthetic two-channel spoken dialogues (user as heard | agent clean)")
    p.add_argument("--out", required=True, help="output directory (resumable: dialogues already there are kept)")
    p.add_argument("--count", type=int, help="number of dialogues (default: the preset's)")
    p.add_argument("--preset", default="data-smoke", help="data-smoke, data-tiny (agent/presets/data-*.yaml) or a YAML file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes (each loads the agent voice)")
    p.add_argument("--split", action="append", help="write only this split's dialogues out of --count, the same ones "
                   "a full run writes (repeatable or comma-separated; e.g. --split test for a held-out set)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_synth)


def cmd_bench_detector(args: argparse.Namespace) -> int:
    from agent.bench_detector import bench_detector

    try:
        counts = [int(v) for v in str(args.sessions).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sessions must be session counts separated by commas, e.g. 1,8,32, got "
                         f"{args.sessions!r}.") from None
    print(json.dumps(bench_detector(sessions=counts, frames=args.frames, detector=args.detector,
                                    threads=args.threads), indent=2))
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from agent.bench_serve import bench_serve

    if not 0 <= args.max_late <= 1:
        raise ValueError(f"--max-late is a share of the frames, from 0 to 1, got {args.max_late}.")
    try:
        engine_args = json.loads(args.engine_args) if args.engine_args else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--engine-args is not valid JSON ({e}); e.g. '{{\"enforce_eager\": true}}'.") from None
    if engine_args is not None and not isinstance(engine_args, dict):
        raise ValueError("--engine-args must be a JSON object, e.g. '{\"enforce_eager\": true}'.")
    result = bench_serve(backend=args.backend, sessions=args.sessions, model=args.model, preset=args.preset,
                         codec=args.codec, frames=args.frames, sweep=args.sweep, max_late=args.max_late,
                         greedy=args.greedy, adapter=args.adapter, adapters_dir=args.adapters_dir,
                         threads=args.threads, engine_args=engine_args)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duplex", description="A full-duplex spoken dialogue agent.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="run a conversation from a WAV file offline and write a stereo WAV")
    p.add_argument("--in", dest="input", required=True, help="the user's audio (WAV/FLAC/OGG, any rate/channels)")
    p.add_argument("--out", dest="output", required=True, help="stereo WAV to write (user left, agent right)")
    p.add_argument("--model", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--codec-weights", help="local weights directory for neural codecs (mimi, snac)")
    p.add_argument("--realtime", action="store_true", help="pace input and clock in real time like a live mic")
    p.add_argument("--tail", default="auto", metavar="auto|SECONDS",
                   help="silence after the input so the agent can answer: 'auto' (default) runs on until the agent "
                   "has been quiet for 1.5 s (at most 10 s); a number of seconds gives exactly that much")
    p.add_argument("--max-seconds", type=float, help="stop after this much input")
    p.add_argument("--out-rate", type=int, help="output sample rate (default: the codec's)")
    p.add_argument("--engine", default="auto", choices=["auto", "lean", "hf"], help="transformers backend engine")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_session_flags(p)
    p.set_defaults(func=cmd_chat)

    model = sub.add_parser("model", help="make checkpoint directories").add_subparsers(dest="model_cmd", required=True)
    p = model.add_parser("init", help="a new checkpoint: random from a shape preset, or from a local base LLM")
    p.add_argument("out_dir")
    p.add_argument("--preset", default="tiny", help="shape preset: nano, tiny, tiny-fsq (tiny for the fsq codec), small (ignored with --base)")
    p.add_argument("--base", help="local Llama/Qwen2-family model directory to extend (nothing is downloaded)")
    p.add_argument("--codec", default="codec2", help="codec preset: codec2 (700C), codec2-1300, codec2-3200, fsq (the shipped project codec), mimi, snac")
    p.add_argument("--codec-weights", help="local weights directory for neural codecs")
    p.add_argument("--q-in", type=int, help="user codebooks per frame (default: all)")
    p.add_argument("--q-out", type=int, help="agent codebooks per frame (default: all)")
    p.add_argument("--text-lead", type=int, default=1, help="frames the agent's text leads its audio (δ)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-json", help='shape overrides as JSON, e.g. \'{"layers": 6}\'')
    p.add_argument("--delta", help="rebuild a speech base from --base and this `duplex model delta` directory")
    p.add_argument("--heard-text", action="store_true", help="the text slot also carries the agent's transcript "
                   "of the user (heard ids; layout version 2), a dense listening target")
    p.add_argument("--heard-text-from", metavar="SRC", help="grow the checkpoint SRC into the heard-text layout "
                   "(its weights kept, heard rows copied from the text rows; in a speech base, plus one shared 'heard' vector) "
                   "instead of making a new one")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty directory")
    p.set_defaults(func=cmd_model_init)
    p = model.add_parser("delta", help="a speech base as a small delta on its base LLM (new rows + low-rank updates)")
    p.add_argument("src", help="speech base checkpoint (the output of `duplex train --preset speech-duplex`)")
    p.add_argument("out_dir")
    p.add_argument("--base", required=True, help="the base LLM it was made from (e.g. smollm2)")
    p.add_argument("--tol", type=float, default=1e-3, help="largest residual of each low-rank update, relative to "
                   "the update's norm (merged LoRA updates are exactly low-rank)")
    p.add_argument("--max-rank", type=int, default=128, help="refuse updates that need a higher rank")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="storage (float16 by default: rebuilt logits within ~0.02 of the original)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty directory")
    p.set_defaults(func=cmd_model_delta)
    p = model.add_parser("export", help="a shipping copy of a trained checkpoint (bfloat16 weights by default)")
    p.add_argument("src", help="checkpoint directory (e.g. the output of `duplex train`)")
    p.add_argument("out_dir")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--force", action="store_true", help="overwrite a non-empty directory")
    p.set_defaults(func=cmd_model_export)

    p = sub.add_parser("doctor", help="what is installed and what is missing")
    p.set_defaults(func=cmd_doctor)

    bench = sub.add_parser("bench", help="benchmarks printing JSON").add_subparsers(dest="bench_cmd", required=True)
    p = bench.add_parser("step", help="per-frame step time of one session (listen + think + speak)")
    _add_bench_model_flags(p)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--engine", default="auto", choices=["auto", "lean", "hf"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:N or auto")
    p.set_defaults(func=cmd_bench_step)
    p = bench.add_parser("train", help="training steps per second for a model shape (bf16 autocast and fp32)")
    _add_bench_model_flags(p)
    p.add_argument("--window-frames", type=int, default=78)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per precision (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_bench_train)
    p = bench.add_parser("serve", help="concurrent sessions on one backend, real-time paced (think step only)")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions (with --sweep: 1..N)")
    p.add_argument("--sweep", action="store_true", help="run 1..N sessions and report the largest real-time N")
    _add_bench_model_flags(p, preset="nano")
    p.add_argument("--frames", type=int, default=100, help="frames per session")
    p.add_argument("--max-late", type=float, default=0.01, help="share of late frames still counted real time")
    p.add_argument("--greedy", action="store_true", help="greedy sampling (default: the default sampling settings)")
    p.add_argument("--adapter", help="LoRA adapter name for every session (needs --adapters-dir)")
    p.add_argument("--adapters-dir", help="directory of LoRA adapters")
    p.add_argument("--threads", type=int, help="torch threads (transformers backend)")
    p.add_argument("--engine-args", help="extra vLLM AsyncEngineArgs as JSON")
    p.set_defaults(func=cmd_bench_serve)
    p = bench.add_parser("detector", help="the turn detector per session frame, one forward each vs batched")
    p.add_argument("--sessions", default="1,8,32,64", help="session counts, comma-separated")
    p.add_argument("--frames", type=int, default=50, help="80 ms frames per session (paced in real time)")
    p.add_argument("--detector", default="", help="a detector directory (default: the shipped one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a server's sessions use)")
    p.set_defaults(func=cmd_bench_detector)

    p = sub.add_parser("serve", help="Realtime WebSocket server (OpenAI Realtime subset, see docs/realtime-events.md)")
    _add_server_flags(p, 8765)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="the web page: talk to the agent in a browser (Gradio)")
    _add_server_flags(p, 7860)
    p.set_defaults(func=cmd_demo)
    from agent.training.cli import add_commands as add_training_commands

    data_group = _group(sub, "data", "dialogue data: synthesize and tokenize")
    _add_data_synth(data_group)
    add_training_commands(sub, data_group)
    from agent.codec_train import add_codec_commands

    add_codec_commands(sub)
    from agent.recognizer_train import add_recognizer_commands

    add_recognizer_commands(sub)
    from agent.turn_train import add_turn_commands

    add_turn_commands(sub)
    from agent.daemon.cli import add_daemon_command  # duplex daemon (docs/daemon.md)

    add_daemon_command(sub)
    return parser


def _group(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    """The subcommand group ``name`` (created once, shared by the modules that add commands to it)."""
    if name in sub.choices:
        return sub.choices[name]._subparsers._group_actions[0]
    return sub.add_parser(name, help=help_text).add_subparsers(dest=f"{name}_cmd", required=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("duplex: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as e:
        if args.verbose:
            raise
        print(f"duplex: error: {_error_sentence(e)}", file=sys.stderr)
        return 2


def _error_sentence(e: Exception) -> str:
    """One sentence for an error; a bare OSError ("[Errno 20] Not a directory: 'x'") names its path and cause."""
    import errno
    import os

    if not isinstance(e, OSError) or e.strerror is None:
        return str(e)  # our own messages are already sentences
    path = e.filename
    if path is None:
        return f"{e.strerror}."
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file, but a directory is needed there; pass another path."
    return f"{e.strerror}: {path}."


if __name__ == "__main__":
    sys.exit(main())
