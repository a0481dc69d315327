"""Reading images: the one decoder of the project, which refuses truncated and corrupt files.

`read_image` returns the stored pixel grid as uint8 RGB (H,W,3) or gray (H,W):

- Completeness is checked before decoding, from the bytes: a JPEG must reach the end marker (EOI) of
  its primary image, a PNG its IEND chunk, a WebP the size its RIFF header declares, an uncompressed
  BMP its last pixel row. OpenCV 4.x decodes a JPEG cut anywhere (even at 5%) and fills the missing
  rows with grey; these checks stop that. TIFF and the other formats are left to the decoder, which
  fails on a truncated file (tested for TIFF, WebP and BMP with OpenCV 4.10 and 5.0).
- Bytes after the JPEG EOI or the PNG IEND are accepted and ignored: cameras and phones put data
  there (Multi-Picture Format previews, Samsung trailers, Google motion-photo videos, padding).
- What the decoders print on stderr (libjpeg's "Corrupt JPEG data: premature end of data segment",
  libpng's errors, OpenCV's log lines) is captured, tied to the file and never printed unnamed:
  libjpeg's corrupt-data warnings raise `ImageError`, other messages are logged with the path.
- EXIF orientation is ignored, as COLMAP does: camera models and poses describe the stored grid.
- Gray images are replicated to RGB; alpha is dropped (not composited); 16-bit images are scaled to
  8 bits by /257 with rounding (65535 -> 255, exact for 257*k); float images are refused.
- Gray output: a JPEG's luma as libjpeg decodes it (IMREAD_GRAYSCALE), other formats through
  cv2.cvtColor (the same Rec.601 weights).

`image_size` reads (w, h) from the header of a JPEG, PNG, BMP, WebP or TIFF without decoding (other
formats are decoded).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

FIX = "re-copy or re-download the file, or remove it from the scene"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
    """A file that is not a complete, decodable image. The message names the path, the problem and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = FIX):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}; {fix}")


# --- what the bytes are, and whether they are all there ---------------------------------------------

def _kind(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    return None


# A marker inside entropy-coded data: 0xFF followed by neither 0x00 (stuffing), RST0-7 nor 0xFF (fill).
_ENTROPY_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_end(data: bytes) -> int | None:
    """Offset just past the EOI marker of the primary image, or None when the data ends before it.

    Walks the marker segments by their lengths and skips each scan's entropy-coded data to the next
    marker, so an FFD9 inside a segment (an EXIF thumbnail) or a later embedded image does not count.
    Tolerant like libjpeg: stray bytes between segments are skipped; only running out of data fails.
    """
    n, pos = len(data), 2
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0:
            return None
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return None
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return pos
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # no length field
            continue
        if pos + 2 > n:
            return None
        pos += max(2, struct.unpack_from(">H", data, pos)[0])
        if pos > n:
            return None
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            match = _ENTROPY_MARKER.search(data, pos)
            if match is None:
                return None
            pos = match.start()


def _png_complete(data: bytes) -> bool:
    pos, n = 8, len(data)
    while pos + 12 <= n:
        length, chunk = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length
        if chunk == b"IEND":
            return pos <= n
    return False


def _bmp_needed(data: bytes) -> int | None:
    """Bytes an uncompressed BMP needs (pixel offset + rows), or None when the header does not say."""
    offset, header = struct.unpack_from("<I I", data, 10)
    if header == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    elif header >= 40 and len(data) >= 34:
        width, height, _, bpp, compression = struct.unpack_from("<iiHHI", data, 18)
    else:
        return None
    if compression not in (0, 3, 6) or width <= 0 or bpp == 0:
        return None
    return offset + (width * bpp + 31) // 32 * 4 * abs(height)


def _incomplete(kind: str | None, data: bytes) -> str | None:
    """What is missing from the bytes of an image of this kind, or None when they look complete."""
    n = len(data)
    if kind == "JPEG" and jpeg_end(data) is None:
        return f"truncated: ends before the JPEG end marker ({n} bytes)"
    if kind == "PNG" and not _png_complete(data):
        return f"truncated: ends before the PNG IEND chunk ({n} bytes)"
    if kind == "WebP":
        needed = 8 + struct.unpack_from("<I", data, 4)[0]
        if n < needed:
            return f"truncated: {n} of the {needed} bytes its WebP header declares"
    if kind == "BMP":
        needed = _bmp_needed(data)
        if needed is not None and n < needed:
            return f"truncated: {n} of the {needed} bytes its BMP header implies"
    return None


# --- decoding with the decoders' stderr captured --------------------------------------------------

# Lines that libjpeg, libpng, libtiff (through OpenCV) and OpenCV's logger print while decoding.
_DECODER_LINE = re.compile(
    rb"(libpng (warning|error)|\[ ?(WARN|ERROR|INFO|DEBUG|FATAL|VERBOSE):|Corrupt JPEG data|Premature end of JPEG"
    rb"|Invalid SOS parameters|Inconsistent progression|Unknown Adobe color|Warning: unknown JFIF"
    rb"|Warning: thumbnail image size|Application transferred too|JPEG datastream contains no image)"
)
# libjpeg warnings that mean missing or damaged pixels (the image decodes, with grey or garbage blocks).
_JPEG_FATAL = re.compile(r"premature end|bad Huffman code|bad arithmetic code|found marker 0x\w+ instead of RST")
_OPENCV_PREFIX = re.compile(r"^\[ ?[A-Z]+:[^\]]*\] (global )?\S+ ")


class _Window:
    def __init__(self) -> None:
        self.start, self.shared, self.text = 0, False, b""


class _StderrCapture:
    """Redirects fd 2 into a file while images decode, so each decoder message can be tied to its image.

    Decodes in several threads share one redirection. A decode whose window overlapped another's and
    caught a decoder message cannot tell whose it is: it decodes again alone (`alone=True`). Captured
    text that is not a decoder message (Python's stderr, a progress bar) goes on to the real stderr.
    Where fd 2 cannot be redirected (no os.pread, fd 2 closed), decoding runs uncaptured.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: list[_Window] = []
        self._alone = False
        self._waiting_alone = 0
        self._file = None
        self._saved = -1
        self._forwarded = 0

    def _offset(self) -> int:
        return os.lseek(self._file.fileno(), 0, os.SEEK_CUR)

    def _start(self) -> None:
        if not hasattr(os, "pread"):
            return
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            self._saved = os.dup(2)
        except OSError:
            return
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        self._forwarded = 0

    def _stop(self) -> None:
        if self._file is None:
            return
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        self._forward(self._offset(), final=True)
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.close()
        self._file, self._saved = None, -1

    def _forward(self, end: int, final: bool = False) -> None:
        data = os.pread(self._file.fileno(), end - self._forwarded, self._forwarded)
        if not final:  # whole lines only: the rest may still be being written
            data = data[: max(data.rfind(b"\n"), data.rfind(b"\r")) + 1]
        self._forwarded += len(data)
        out = b"".join(line for line in data.splitlines(keepends=True) if not _DECODER_LINE.match(line))
        while out:
            out = out[os.write(self._saved, out):]

    @contextmanager
    def window(self, alone: bool = False) -> Iterator[_Window]:
        """While open, what fd 2 receives is captured; on exit `window.text` holds this window's share."""
        window = _Window()
        with self._cond:
            if alone:
                self._waiting_alone += 1
                while self._active:
                    self._cond.wait()
                self._waiting_alone -= 1
                self._alone = True
            else:
                while self._alone or self._waiting_alone:
                    self._cond.wait()
            if not self._active:
                self._start()
            window.shared = bool(self._active)
            for other in self._active:
                other.shared = True
            self._active.append(window)
            if self._file is not None:
                window.start = self._offset()
        try:
            yield window
        finally:
            with self._cond:
                if self._file is not None:
                    end = self._offset()
                    window.text = os.pread(self._file.fileno(), end - window.start, window.start)
                    self._forward(end)
                self._active.remove(window)
                if not self._active:
                    self._stop()
                    self._alone = False
                    self._cond.notify_all()


_capture = _StderrCapture()


def _decoder_messages(text: bytes) -> list[str]:
    lines = (line.strip() for line in text.splitlines() if _DECODER_LINE.match(line))
    return [_OPENCV_PREFIX.sub("", line.decode("utf-8", "replace")) for line in lines if line]


def _decode(data: bytes, flags: int) -> tuple[np.ndarray | None, list[str]]:
    """cv2.imdecode and the messages the decoders printed for this image."""
    buffer = np.frombuffer(data, np.uint8)
    with _capture.window() as window:
        image = cv2.imdecode(buffer, flags)
    messages = _decoder_messages(window.text)
    if messages and window.shared:  # other decodes ran meanwhile: decode alone to know whose they are
        with _capture.window(alone=True) as window:
            image = cv2.imdecode(buffer, flags)
        messages = _decoder_messages(window.text)
    return image, messages


_warned: dict[str, int] = {}


def _log_message(path: Path, message: str) -> None:
    # A whole scene may share one harmless warning (e.g. libpng's sRGB profile): a few, then debug.
    kind = re.sub(r"\d+", "N", message)
    _warned[kind] = _warned.get(kind, 0) + 1
    if _warned[kind] <= 3:
        suffix = " (further ones at debug level)" if _warned[kind] == 3 else ""
        logger.warning("%s: decoder says: %s%s", path, message, suffix)
    else:
        logger.debug("%s: decoder says: %s", path, message)


def _to_uint8(image: np.ndarray, path: Path, grayscale: bool) -> np.ndarray:
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(path, f"{image.dtype} pixels are not supported (8- or 16-bit images only)",
                         "convert it to an 8- or 16-bit PNG, TIFF or JPEG")
    if image.ndim == 3 and image.shape[2] in (1, 2):  # gray, gray + alpha
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] >= 4:  # BGRA: alpha dropped
        image = image[:, :, :3]
    if image.ndim == 2:
        return np.ascontiguousarray(image) if grayscale else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if grayscale else cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """The stored pixels of an image file: (H,W,3) uint8 RGB, or (H,W) uint8 with `grayscale`.

    Raises FileNotFoundError for a missing file and ImageError for an empty, truncated, corrupt or
    undecodable one (see the module docstring for what is checked and how pixels are converted).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image not found; check the image folder and the image names") from None
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    kind = _kind(data)
    problem = _incomplete(kind, data)
    if problem:
        raise ImageError(path, problem)
    if kind == "JPEG":  # always 8-bit; libjpeg converts to gray itself (its luma)
        flags = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    else:
        flags = cv2.IMREAD_UNCHANGED  # keeps 16 bits and alpha; never applies EXIF orientation
    image, messages = _decode(data, flags)
    if image is None:
        if kind is None and not messages:
            raise ImageError(path, f"not an image, or a format OpenCV cannot read (the file starts with {data[:8]!r})")
        said = f" ({'; '.join(messages)})" if messages else ""
        raise ImageError(path, f"corrupt: the {kind or 'image'} data cannot be decoded{said}")
    fatal = [m for m in messages if _JPEG_FATAL.search(m)]
    if fatal:
        raise ImageError(path, f"corrupt: libjpeg says '{fatal[0]}' (pixels missing or damaged)")
    for message in messages:
        _log_message(path, message)
    return _to_uint8(image, path, grayscale)


# --- sizes from headers ---------------------------------------------------------------------------

# JPEG start-of-frame markers (baseline, progressive, lossless, ...): they carry the image size.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(f) -> tuple[int, int] | None:
    """(w, h) of the first SOF segment, seeking over the segments before it."""
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":  # stray bytes before the next marker
            byte = f.read(1)
        while byte == b"\xff":  # fill bytes
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # no length field
            continue
        if marker in (0xD9, 0xDA):  # end of image, or a scan before any frame header
            return None
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if marker in _SOF_MARKERS:
            data = f.read(5)
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return width, height
        f.seek(length - 2, 1)


def _tiff_size(f) -> tuple[int, int] | None:
    """(w, h) from the first IFD of a classic TIFF (tags 256 ImageWidth, 257 ImageLength)."""
    f.seek(0)
    head = f.read(8)
    order = "<" if head[:2] == b"II" else ">"
    if struct.unpack(order + "H", head[2:4])[0] != 42:
        return None  # BigTIFF: decoded instead
    f.seek(struct.unpack(order + "I", head[4:8])[0])
    count_bytes = f.read(2)
    if len(count_bytes) < 2:
        return None
    count = struct.unpack(order + "H", count_bytes)[0]
    entries = f.read(12 * count)
    size: dict[int, int] = {}
    for i in range(len(entries) // 12):
        tag, kind, _, value = struct.unpack_from(order + "HHI4s", entries, 12 * i)
        if tag in (256, 257) and kind in (3, 4):
            size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[: 2 if kind == 3 else 4])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", head, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = struct.unpack_from("<I", head, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    header = struct.unpack_from("<I", head, 14)[0]
    if header == 12:
        return struct.unpack_from("<HH", head, 18)
    width, height = struct.unpack_from("<ii", head, 18)
    return width, abs(height)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the stored pixel grid (before any EXIF rotation), from the file header.

    JPEG (SOF), PNG (IHDR), BMP, WebP and classic TIFF headers are read without decoding; other
    formats are decoded with `read_image`. The header is not a completeness check: `read_image` is.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image not found; check the image folder and the image names") from None
    with f:
        head = f.read(32)
        kind = _kind(head)
        size = None
        if len(head) >= 30:
            if kind == "JPEG":
                size = _jpeg_size(f)
            elif kind == "PNG" and head[12:16] == b"IHDR":
                size = struct.unpack_from(">II", head, 16)
            elif kind == "TIFF":
                size = _tiff_size(f)
            elif kind == "WebP":
                size = _webp_size(head)
            elif kind == "BMP":
                size = _bmp_size(head)
    if size is None or min(size) <= 0:
        image = read_image(path)
        size = (image.shape[1], image.shape[0])
    return int(size[0]), int(size[1])


def image_sizes(image_dir: str | Path, names: list[str]) -> np.ndarray:
    """(N,2) int64 [w,h] of the named images (paths relative to `image_dir`), from their headers."""
    return np.array([image_size(Path(image_dir) / n) for n in names], np.int64).reshape(len(names), 2)
