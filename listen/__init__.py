"""Input side: PCM at any rate and channel count -> mono float32 -> resampled once -> codec frames
-> VAD flags -> codec ids (``Listener``). Imports only ``streaming`` (plus numpy, soxr, soundfile, webrtcvad).
``listen/recognizer.py`` (imported on its own; torch, rapidfuzz) is the streaming recogniser whose words a
heard-text model can be given (``agent/heard.py``)."""
from listen.framer import Framer
from listen.listener import Listener, UserFrame
from listen.pcm import AudioInputError, float32_to_pcm16_bytes, pcm16_bytes_to_float32, to_float32_mono
from listen.resample import StreamingResampler
from listen.vad import VoiceActivityDetector
from listen.wavio import WavInfo, iter_wav_blocks, read_wav, wav_info, write_wav

__all__ = [
    "AudioInputError",
    "Framer",
    "Listener",
    "StreamingResampler",
    "UserFrame",
    "VoiceActivityDetector",
    "WavInfo",
    "float32_to_pcm16_bytes",
    "iter_wav_blocks",
    "pcm16_bytes_to_float32",
    "read_wav",
    "to_float32_mono",
    "wav_info",
    "write_wav",
]
