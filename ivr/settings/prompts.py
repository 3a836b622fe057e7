"""Builds the IVR's shared parts from the config: prompts, flows, media engine.

``prompt_sources`` lists every prompt the flows may play (configured ones
plus the built-in digits, number words and tones); ``load_prompts`` renders
them into the cache. The CLI calls it before the server starts, so a prompt
that cannot be found or rendered stops start-up with its name, not a call.
"""

from __future__ import annotations

import array
import math
from pathlib import Path

from ivr.media.g711 import SAMPLE_RATE
from ivr.media.prompts import PromptSource, PromptStore
from ivr.settings.builtin_prompts import BUILTIN_TONES, builtin_prompt_texts
from ivr.settings.config import Config


def prompt_sources(config: Config) -> dict[str, PromptSource]:
    sources = {pid: PromptSource(text=text) for pid, text in builtin_prompt_texts().items()}
    for pid, p in config.ivr.prompts.items():
        sources[pid] = PromptSource(text=p.text, file=p.file)
    return sources


def tone_pcm(freq: float, seconds: float, amplitude: int = 6000) -> bytes:
    n = int(seconds * SAMPLE_RATE)
    return array.array(
        "h", [int(amplitude * math.sin(2 * math.pi * freq * i / SAMPLE_RATE)) for i in range(n)]
    ).tobytes()


def load_prompts(config: Config) -> PromptStore:
    """Render (or find in the cache) every prompt; raises PromptError naming the prompt."""
    store = PromptStore(Path(config.media.prompt_cache))
    store.load(prompt_sources(config))
    for pid, (freq, seconds) in BUILTIN_TONES.items():
        store.add_pcm(pid, tone_pcm(freq, seconds))
    if "hold_music" not in config.ivr.prompts:
        store.add_pcm("hold_music", hold_music_pcm())
    return store


def hold_music_pcm() -> bytes:
    """About eight seconds of a soft arpeggio, looped while callers wait in a queue."""
    notes = (261.63, 329.63, 392.0, 523.25, 392.0, 329.63, 293.66, 349.23, 440.0, 587.33, 440.0, 349.23)
    pcm = bytearray()
    for i, freq in enumerate(notes):
        n = int(0.6 * SAMPLE_RATE)
        fade = int(0.05 * SAMPLE_RATE)
        bass = notes[(i // 6) * 6] / 2
        samples = array.array("h")
        for k in range(n):
            env = min(1.0, k / fade, (n - k) / fade)
            t = 2 * math.pi * k / SAMPLE_RATE
            v = 2500 * math.sin(freq * t) + 1500 * math.sin(bass * t)
            samples.append(int(env * v))
        pcm += samples.tobytes()
    return bytes(pcm) + bytes(int(0.8 * SAMPLE_RATE) * 2)
