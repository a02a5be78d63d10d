"""A job's inputs, packed for the job store: everything a worker needs to run it, in any process, again.

The request's fields and output options as JSON, then its reference images as lossless PNGs, already
reduced to what the engine uses (so a re-run after a crash makes the same pixels without fetching
anything again). Its LoRA choices are kept as the user gave them (a requeued job runs with the same LoRAs,
from the disk cache of downloads or fetched again by the worker that runs it).
Layout: 4-byte big-endian header length, the JSON header, the PNGs one after another.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct

from PIL import Image

from kleinserve.imaging import encode_png
from kleinserve.request import GenerationRequest, LoraChoice, OutputOptions

_HEADER_LENGTH = struct.Struct(">I")


def pack_inputs(request: GenerationRequest, output: OutputOptions) -> bytes:
    pictures = [_png(image) for image in request.images]
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name != "images"}
    fields["loras"] = [dataclasses.asdict(choice) for choice in request.loras]
    header = {
        "request": fields,
        "output": dataclasses.asdict(output),
        "image_bytes": [len(picture) for picture in pictures],
    }
    encoded = json.dumps(header).encode()
    return b"".join([_HEADER_LENGTH.pack(len(encoded)), encoded, *pictures])


def unpack_inputs(data: bytes) -> tuple[GenerationRequest, OutputOptions]:
    (length,) = _HEADER_LENGTH.unpack_from(data)
    offset = _HEADER_LENGTH.size
    header = json.loads(data[offset : offset + length])
    offset += length
    images = []
    for size in header["image_bytes"]:
        image = Image.open(io.BytesIO(data[offset : offset + size]))
        image.load()
        images.append(image)
        offset += size
    fields = header["request"]
    loras = tuple(LoraChoice(**choice) for choice in fields.pop("loras", ()))
    request = GenerationRequest(**fields, images=tuple(images), loras=loras)
    return request, OutputOptions(**header["output"])


def _png(image: Image.Image) -> bytes:
    """RGB, as the engine reads it (a pointwise conversion, so it commutes with the engine's crop)."""
    return encode_png(image.convert("RGB"))
