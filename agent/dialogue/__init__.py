"""Synthetic two-channel spoken dialogues for training the full-duplex model (``duplex data synth``).

- :mod:`agent.dialogue.content`  what is said: intents with paraphrases and slots, a facts table, real chat turns
- :mod:`agent.dialogue.timeline` when it is said: turns placed with duplex phenomena (pauses, backchannels,
  interruptions, silences) and labelled events
- :mod:`agent.dialogue.tts`      offline voices: one agent voice with word timings, many user voices
- :mod:`agent.dialogue.augment`  the user channel as the model hears it (speed, pitch, noise, gain, echo)
- :mod:`agent.dialogue.synth`    the engine: dialogues -> ``<id>.wav`` + ``<id>.json`` + ``manifest.json``
"""
