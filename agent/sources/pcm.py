"""PCM audio as the audio sources read it: the WAV `fmt ` header, and samples to float32 in [-1, 1].

Pure functions, no I/O: the WAV replay and the ALSA source hand them bytes.

Invariants: integer samples are scaled by their full scale (8-bit WAV is unsigned, centred on 128; 16, 24 and 32-bit
are signed little-endian), so they land in [-1, 1); float samples are passed through as they are (a float file may
hold values beyond ±1, and clipping would hide that); a trailing partial frame is never decoded (the caller keeps it
for the next bytes); the result is a fresh float32 array of shape [frames, channels].
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agent.types import FloatArray

Encoding = Literal["int", "float"]

FORMAT_PCM = 0x0001
FORMAT_FLOAT = 0x0003
FORMAT_EXTENSIBLE = 0xFFFE
_FORMAT_NAMES = {
    0x0002: "MS ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
}
INT_WIDTHS = (1, 2, 3, 4)
FLOAT_WIDTHS = (4, 8)
MAX_CHANNELS = 64
SUPPORTED = "PCM integer (8, 16, 24 or 32-bit) and float (32 or 64-bit)"


class PcmFormatError(ValueError):
    """A WAV header this reader cannot use; `str(error)` says why."""


@dataclass(frozen=True, slots=True)
class PcmFormat:
    """How the samples of a stream are laid out."""

    encoding: Encoding
    width: int
    """Bytes per sample."""
    channels: int
    sample_rate: int

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame (one sample of every channel)."""
        return self.width * self.channels

    def describe(self) -> str:
        """`16-bit integer, 2 channels, 16000 Hz`."""
        return f"{self.width * 8}-bit {self.encoding}, {self.channels} channel(s), {self.sample_rate} Hz"


def checked_format(encoding: Encoding, width: int, channels: int, sample_rate: int) -> PcmFormat:
    """The format, or PcmFormatError when this reader cannot decode it."""
    widths = INT_WIDTHS if encoding == "int" else FLOAT_WIDTHS
    if width not in widths:
        raise PcmFormatError(f"{width * 8}-bit {encoding} samples are not supported (supported: {SUPPORTED})")
    if not 1 <= channels <= MAX_CHANNELS:
        raise PcmFormatError(f"the header states {channels} channels (1 to {MAX_CHANNELS} are read)")
    if sample_rate < 1:
        raise PcmFormatError(f"the header states a sample rate of {sample_rate} Hz")
    return PcmFormat(encoding, width, channels, sample_rate)


def parse_fmt_chunk(body: bytes) -> PcmFormat:
    """The format a WAV `fmt ` chunk describes (plain, float or WAVE_FORMAT_EXTENSIBLE); PcmFormatError otherwise."""
    if len(body) < 16:
        raise PcmFormatError(f"the fmt chunk is {len(body)} bytes long (at least 16 are needed)")
    tag, channels, sample_rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise PcmFormatError("a WAVE_FORMAT_EXTENSIBLE fmt chunk shorter than 40 bytes")
        (tag,) = struct.unpack_from("<H", body, 24)  # the first two bytes of the sub-format GUID
    if tag not in (FORMAT_PCM, FORMAT_FLOAT):
        name = _FORMAT_NAMES.get(tag, "unknown")
        raise PcmFormatError(
            f"unsupported WAV encoding: format tag 0x{tag:04x} ({name}); supported: {SUPPORTED} "
            "(convert with e.g. `sox in.wav -e signed -b 16 out.wav`)"
        )
    width = (bits + 7) // 8
    fmt = checked_format("int" if tag == FORMAT_PCM else "float", width, channels, sample_rate)
    if block_align != fmt.frame_bytes:
        raise PcmFormatError(
            f"the header's block size ({block_align} bytes) does not match {channels} channel(s) of {bits} bits"
        )
    return fmt


def decode(data: bytes, fmt: PcmFormat) -> FloatArray:
    """The whole frames in `data` as float32 [frames, channels] (integers scaled to [-1, 1))."""
    frames = len(data) // fmt.frame_bytes
    data = data[: frames * fmt.frame_bytes]
    if fmt.encoding == "float":
        values = np.frombuffer(data, dtype="<f4" if fmt.width == 4 else "<f8").astype(np.float32)
    elif fmt.width == 1:
        values = np.frombuffer(data, dtype=np.uint8).astype(np.float32)
        values -= 128.0
        values *= 1 / 128
    else:
        if fmt.width == 3:
            raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
            ints -= (ints >= 1 << 23) * (1 << 24)  # sign extension
        else:
            ints = np.frombuffer(data, dtype="<i2" if fmt.width == 2 else "<i4")
        # one rounding at most (int32 to float32); the power-of-two scale is exact
        values = ints.astype(np.float32)
        values *= 1 / (1 << (fmt.width * 8 - 1))
    result: FloatArray = values.reshape(frames, fmt.channels)
    return result
