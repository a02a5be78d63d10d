"""Image files in and out: decode user images with clear errors, encode results as png/jpeg/webp."""

from __future__ import annotations

import asyncio
import base64
import ctypes
import ctypes.util
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import fpng
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kleinserve.errors import InvalidRequest
from kleinserve.request import reference_resize_size

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None
if _LIBC is not None and not hasattr(_LIBC, "malloc_trim"):
    _LIBC = None

MAX_INPUT_PIXELS = 64 * 1024 * 1024  # references are shrunk to 1 MP anyway; refuse decompression bombs
LARGE_PIXELS = 4 * 1024 * 1024
DECODE_SLOTS = 2  # reference decodes at once, server-wide: peak ~ 2 x (decoded + upright copy) of 64 MP
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageFormat:
    pillow: str  # Pillow's name for it
    content_type: str
    extension: str  # what its files end with (no dot)


# The one table of output formats: every content type and file extension in kleinserve is read from it.
OUTPUT_FORMATS = {
    "png": ImageFormat("PNG", "image/png", "png"),
    "jpeg": ImageFormat("JPEG", "image/jpeg", "jpg"),
    "webp": ImageFormat("WEBP", "image/webp", "webp"),
}
CONTENT_TYPES = {name: fmt.content_type for name, fmt in OUTPUT_FORMATS.items()}
# a format's name or its extension ("jpg") -> its name
FORMAT_NAMES = {alias: name for name, fmt in OUTPUT_FORMATS.items() for alias in (name, fmt.extension)}
EXTENSIONS = {f".{alias}": name for alias, name in FORMAT_NAMES.items()}  # a file path's suffix -> format


def decode_image(data: bytes, name: str, field: str = "image") -> Image.Image:
    """Bytes of a png/jpeg/webp/... reference image -> an upright PIL image, fully decoded and at once reduced
    to what the engine uses (at most 1 MP; the engine's own first step, so its pixels are unchanged). The
    memory a large image took is handed back to the system at once. `name` appears in errors.

    The server runs this on DECODE_SLOTS threads only (ImageService), so peak memory stays bounded however
    many large images arrive together: each thread's allocator keeps what it used."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise InvalidRequest(
                    field, f"{name} is {image.width}x{image.height}; images may have at most 64 megapixels"
                )
            image.load()
            large = image.width * image.height > LARGE_PIXELS
            ImageOps.exif_transpose(image, in_place=True)  # no copy of the full-size image
            image = reduced_reference(image)
    except UnidentifiedImageError as exc:
        raise InvalidRequest(
            field, f"{name} is not an image in a known format (png, jpeg, webp, ...)"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(field, f"{name} is too large to decode safely ({_reason(exc)})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InvalidRequest(field, f"{name} is a broken image ({_reason(exc)})") from exc
    if large:
        release_free_memory()
    return image


def release_free_memory() -> None:
    """Return memory freed inside the C allocator's arenas to the system (glibc; elsewhere a no-op):
    without it, every thread that once decoded a 64 MP image keeps its hundreds of MiB."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def reduced_reference(image: Image.Image) -> Image.Image:
    """Downscaled (Lanczos) to at most 1 MP, as the engine's reference preparation begins; idempotent."""
    size = reference_resize_size(*image.size)
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def read_image_file(path: str | Path, field: str = "image") -> Image.Image:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(field, f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_image(data, str(path), field)


def encode_image(image: np.ndarray | Image.Image, fmt: str, quality: int | None = None) -> bytes:
    """HxWx3 uint8 (or PIL) -> file bytes. Settings from benchmarks/results/encode-cpu.json (1024^2): PNG by
    encode_png; WebP at method 0 (38 ms, vs 102 ms at the default 4 for 5% more bytes)."""
    if fmt == "png":
        return encode_png(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    quality = 90 if quality is None else quality
    if fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, method=0)
    else:
        image.save(buffer, OUTPUT_FORMATS[fmt].pillow, quality=quality)
    return buffer.getvalue()


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """Lossless PNG. RGB uint8 (what the engine makes) through fpng: at 1024^2 5.5 ms vs 78 ms for Pillow at
    compress level 1 on the same CPU, for 18% more bytes (benchmarks/results/encode-cpu.json). It holds the
    GIL while it encodes (Pillow's encoder lets it go): ~5 ms per megapixel. Any other mode, or what fpng
    refuses, through Pillow at compress level 1."""
    pixels = _rgb_pixels(image)
    if pixels is not None:
        data = fpng.from_ndarray(np.ascontiguousarray(pixels))
        if data.startswith(PNG_SIGNATURE):  # on failure the binding returns b"" instead of raising
            return data
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _rgb_pixels(image: np.ndarray | Image.Image) -> np.ndarray | None:
    """The HxWx3 uint8 pixels of an RGB picture with at least one pixel; None for anything else."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            return None
        image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        return None
    return image


def extension_of(content_type: str) -> str:
    """A file extension for an output image's content type ("image/jpeg" -> "jpg")."""
    return next(fmt.extension for fmt in OUTPUT_FORMATS.values() if fmt.content_type == content_type)


async def base64_text(data: bytes) -> str:
    """Base64 of megabytes of image: on a worker thread, not the event loop."""
    return (await asyncio.to_thread(base64.b64encode, data)).decode("ascii")


async def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{await base64_text(data)}"


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
