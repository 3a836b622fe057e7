"""Prompts: text rendered by espeak-ng, or WAV files, held as 8 kHz PCM.

Everything is rendered and loaded at start-up into a cache folder keyed by
a hash of what was asked for, so a restart renders nothing new; a prompt
that cannot be found or rendered is a :class:`PromptError` at load, never a
silent call. Frames for each codec are encoded once, on first use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ivr.media.g711 import FRAME_SAMPLES, SAMPLE_RATE, Codec

FRAME_BYTES_PCM = FRAME_SAMPLES * 2


class PromptError(Exception):
    """A prompt could not be found or rendered (names the prompt)."""


@dataclass(frozen=True, slots=True)
class PromptSource:
    """Where a prompt comes from: ``text`` (spoken by espeak-ng) or a WAV ``file``."""

    text: str | None = None
    file: Path | None = None
    voice: str = "en-us"
    speed: int = 155  # words per minute


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PromptError(f"{what}: {cmd[0]} failed: {exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[:300]
        raise PromptError(f"{what}: {cmd[0]} exited {proc.returncode}: {err}")


def _scratch(out: Path) -> Path:
    """A temp file name beside ``out`` that no other render uses (same text, other prompt id)."""
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=out.stem + ".", suffix=".wav")
    os.close(fd)
    return Path(name)


def read_pcm(path: Path) -> bytes:
    """16-bit mono 8 kHz PCM from a WAV file in exactly that format."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
            raise PromptError(f"{path}: not 8 kHz 16-bit mono")
        return w.readframes(w.getnframes())


def write_wav(path: Path, pcm: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    tmp.replace(path)


class PromptStore:
    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._pcm: dict[str, bytes] = {}
        self._frames: dict[tuple[str, str], tuple[bytes, ...]] = {}

    # -- loading ---------------------------------------------------------------
    def load(self, sources: Mapping[str, PromptSource], workers: int = 4) -> None:
        """Render/convert every prompt (in parallel), then hold them in memory."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        todo = [(pid, src) for pid, src in sources.items() if pid not in self._pcm]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            paths = list(pool.map(lambda item: self._prepare(*item), todo))
        for (pid, _), path in zip(todo, paths, strict=True):
            try:
                self._pcm[pid] = read_pcm(path)
            except (OSError, wave.Error, EOFError) as exc:
                raise PromptError(f"prompt {pid!r}: cannot read {path}: {exc}") from None

    def _prepare(self, pid: str, src: PromptSource) -> Path:
        if src.text is not None:
            key = hashlib.sha256(f"espeak|{src.voice}|{src.speed}|{src.text}".encode()).hexdigest()[:24]
            out = self.cache_dir / f"{key}.wav"
            if out.exists():
                return out
            if shutil.which("espeak-ng") is None:
                raise PromptError(f"prompt {pid!r}: espeak-ng is not installed (make run installs it)")
            raw = _scratch(out)
            try:
                _run(["espeak-ng", "-v", src.voice, "-s", str(src.speed), "-w", str(raw), src.text], f"prompt {pid!r}")
                self._to_8k(raw, out, pid)
            finally:
                raw.unlink(missing_ok=True)
            return out
        if src.file is not None:
            path = Path(src.file)
            if not path.is_file():
                raise PromptError(f"prompt {pid!r}: file {path} not found")
            try:
                read_pcm(path)
                return path  # already 8 kHz 16-bit mono
            except (PromptError, wave.Error, EOFError):
                pass
            st = path.stat()
            key = hashlib.sha256(f"file|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
            out = self.cache_dir / f"{key}.wav"
            if not out.exists():
                self._to_8k(path, out, pid)
            return out
        raise PromptError(f"prompt {pid!r}: neither text nor file")

    @staticmethod
    def _to_8k(src: Path, out: Path, pid: str) -> None:
        if shutil.which("sox") is None:
            raise PromptError(f"prompt {pid!r}: sox is not installed (make run installs it)")
        tmp = _scratch(out)
        cmd = ["sox", str(src), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(tmp)]
        try:
            _run(cmd, f"prompt {pid!r}")
            tmp.replace(out)  # atomic: two renders of the same text both end in one good file
        finally:
            tmp.unlink(missing_ok=True)

    # -- use ---------------------------------------------------------------------
    def __contains__(self, pid: object) -> bool:
        return pid in self._pcm

    def ids(self) -> list[str]:
        return sorted(self._pcm)

    def pcm(self, pid: str) -> bytes:
        return self._pcm[pid]

    def seconds(self, pid: str) -> float:
        return len(self._pcm[pid]) / 2 / SAMPLE_RATE

    def frames(self, pid: str, codec: Codec) -> tuple[bytes, ...]:
        """The prompt as 20 ms G.711 payloads (the last one padded with silence)."""
        key = (pid, codec.name)
        cached = self._frames.get(key)
        if cached is None:
            pcm = self._pcm[pid]
            pad = (-len(pcm)) % FRAME_BYTES_PCM
            encoded = codec.encode(pcm + b"\x00" * pad)
            cached = tuple(encoded[i : i + FRAME_SAMPLES] for i in range(0, len(encoded), FRAME_SAMPLES))
            self._frames[key] = cached
        return cached

    def add_pcm(self, pid: str, pcm: bytes) -> None:
        """A prompt made in code (e.g. a beep)."""
        self._pcm[pid] = pcm
        for key in [k for k in self._frames if k[0] == pid]:
            del self._frames[key]
