"""``duplex daemon``: a headless microphone + speaker agent with echo cancellation, controlled and
observed over MQTT. See docs/daemon.md.

Modules: ``config`` (DaemonConfig, YAML), ``audio_io`` (sounddevice streams, device choice, edge
resampling, retry/backoff, counters), ``echo`` (WebRTC AEC via livekit), ``mqtt`` (aiomqtt bridge),
``brain`` (local Session or remote ``duplex serve`` client), ``daemon`` (composition, SIGTERM).
Every heavy dependency (sounddevice, aiomqtt, livekit, torch) is imported lazily.
"""
