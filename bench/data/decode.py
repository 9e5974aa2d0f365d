"""Image decoding for `bench.data.prepare`: one image file or PIL image -> one uint8 CHW array, exactly once.

Every dataset, whatever its origin, goes through `decode_all`, so preprocessing is defined in one place:
convert to RGB (grayscale, palette, 16-bit and alpha handled), resize the shorter side to `img_size` with
antialiased bicubic, centre-crop a square. Trials then read the prepared arrays and never touch image files;
that is what makes a sweep over hundreds of trials cheap on the data side.

Bump `PREPROCESS_VERSION` whenever the pixels this module produces change: it is part of every dataset
fingerprint, so the change invalidates the prepared-dataset caches and every downstream feature cache.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

PREPROCESS_VERSION = 1

# What a broken or unreadable image raises inside PIL (truncated JPEG -> OSError, bad PNG chunk -> SyntaxError
# or ValueError, absurd dimensions -> DecompressionBombError).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class Source:
    """A list of labelled images, read one at a time by index (possibly from several threads at once).

    `read(i)` returns the image (PIL, any mode) and its class index and may raise one of `DECODE_ERRORS` for a
    corrupt file; `describe(i)` names item `i` in warnings (a file path, usually).
    """

    length: int
    read: Callable[[int], tuple[Image.Image, int]]
    describe: Callable[[int], str]
    # For sources that are image files: their paths and labels, so that a decoder on another machine needs
    # only the paths (or, where the files are not visible, their bytes) and not this object.
    files: Sequence[str] | None = None
    labels: Sequence[int] | None = None

    def window(self, start: int, stop: int) -> Source:
        """Items ``[start, stop)`` as a source of their own."""
        return Source(
            stop - start,
            lambda i: self.read(start + i),
            lambda i: self.describe(start + i),
            None if self.files is None else self.files[start:stop],
            None if self.labels is None else self.labels[start:stop],
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparent pixels are composited onto white rather than revealing whatever colour
    the file stores under alpha 0 (often black or garbage); 16-bit grayscale is scaled to 8 bits, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return Image.fromarray((np.asarray(image, dtype=np.uint32) // 257).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | bytes, img_size: int) -> Image.Image:
    """Open and fully decode one file (its path, or its bytes). Large JPEGs are decoded at a reduced DCT scale
    (what PIL's `thumbnail` does) that still leaves at least twice the target size, so the final bicubic step
    always downsamples."""
    # We own the file, so it is closed even for multi-frame formats.
    with io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb") as file:
        image = Image.open(file)
        if image.format == "JPEG":
            image.draft(None, (2 * img_size, 2 * img_size))
        image.load()
    ImageOps.exif_transpose(image, in_place=True)  # phone photos store their rotation in EXIF
    return image


def resize_center_crop(image: Image.Image, img_size: int) -> np.ndarray:
    """RGB image -> uint8 [3, S, S]: shorter side to S (bicubic, antialiased by PIL), centre crop S x S.
    The rounding matches torchvision's Resize(S) + CenterCrop(S)."""
    image = to_rgb(image)
    width, height = image.size
    if width <= height:
        new_size = (img_size, max(img_size, int(img_size * height / width)))
    else:
        new_size = (max(img_size, int(img_size * width / height)), img_size)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    left = int(round((new_size[0] - img_size) / 2.0))
    top = int(round((new_size[1] - img_size) / 2.0))
    if new_size != (img_size, img_size):
        image = image.crop((left, top, left + img_size, top + img_size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def decode_workers() -> int:
    """PIL releases the GIL while decoding and resizing, so threads scale; bounded to stay polite."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def decode_all(
    source: Source, img_size: int, x_out: np.ndarray, y_out: np.ndarray, workers: int | None = None
) -> list[str]:
    """Decode every item of `source` into the preallocated `x_out[i]` / `y_out[i]` (arrays or memmaps), with
    `workers` threads (default `decode_workers()`).

    Corrupt items are skipped and the remaining rows compacted to the front, order kept; returns the
    descriptions of the skipped ones (the caller warns and trims the arrays to `length - len(skipped)`).
    """
    if x_out.shape != (source.length, 3, img_size, img_size) or y_out.shape != (source.length,):
        raise ValueError(f"output arrays have shapes {x_out.shape}, {y_out.shape} for {source.length} items")
    failed = np.zeros(source.length, dtype=bool)

    def one(index: int) -> None:
        try:
            image, label = source.read(index)
            pixels = resize_center_crop(image, img_size)
        except DECODE_ERRORS:
            failed[index] = True
            return
        x_out[index] = pixels
        y_out[index] = label

    def chunk(start: int) -> None:  # 64 images per task: one future per 8x8 digit would cost more than the work
        for index in range(start, min(start + 64, source.length)):
            one(index)

    starts = range(0, source.length, 64)
    workers = workers or decode_workers()
    if workers == 1 or len(starts) <= 1:
        for start in starts:
            chunk(start)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-decode") as pool:
            list(pool.map(chunk, starts))

    skipped = [source.describe(int(i)) for i in np.flatnonzero(failed)]
    if skipped:
        kept = np.flatnonzero(~failed)
        for new, old in enumerate(kept):  # in place, front to back: new <= old, so nothing is overwritten early
            if new != old:
                x_out[new] = x_out[old]
                y_out[new] = y_out[old]
    return skipped
