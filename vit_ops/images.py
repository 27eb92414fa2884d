"""Opening one image file of a data folder, bounded (uploads to the HTTP service go through
`vit_ops.runtime.transform.decode_image`, which bounds them the same way).

A file is refused (one InputError naming it) when it is not an image PIL can read, when it is
larger than MAX_IMAGE_FILE_BYTES, or when its header declares more than MAX_IMAGE_PIXELS pixels
or a side more than MAX_ASPECT_RATIO times the other: the size is read before anything is decoded,
so a decompression bomb (a tiny PNG that inflates to gigabytes) costs nothing, and so does a
sliver (1 x 10,000,000 pixels is few pixels, but resizing its short side to the model's 16 or 224
would make 2.6 or 500 gigapixels). PIL's own bomb check stays on as a second line.
"""

from __future__ import annotations

import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from planner.errors import InputError

MAX_IMAGE_PIXELS = 64 * 2**20        # 64 Mpx: 8k x 8k, far above any ViT input
MAX_IMAGE_FILE_BYTES = 256 * 2**20
MAX_ASPECT_RATIO = 100  # panoramas are 4:1 to 10:1; the eval resize scales the short side


def size_problem(width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why an image of `width` x `height` pixels is refused before decoding, or None."""
    if width * height > max_pixels:
        return (f"image is {width} x {height} pixels, more than the limit of {max_pixels} "
                f"pixels (a decompression bomb?)")
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        return (f"image is {width} x {height} pixels, one side more than {MAX_ASPECT_RATIO} "
                f"times the other (resizing its short side to the model's input would blow up)")
    return None


@contextmanager
def open_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator:
    """`path` as an open PIL image whose size has been checked (decoded lazily by the caller)."""
    from PIL import Image, UnidentifiedImageError

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # opening a FIFO would wait for a writer forever
            raise InputError("not a regular file (a FIFO or device?)", file=str(path))
        if info.st_size > MAX_IMAGE_FILE_BYTES:
            raise InputError(f"image file is larger than {MAX_IMAGE_FILE_BYTES // 2**20} MiB",
                             file=str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if (problem := size_problem(*image.size, max_pixels)) is not None:
                    raise InputError(problem, file=str(path))
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError("image declares too many pixels (a decompression bomb?)",
                         file=str(path)) from None
    except UnidentifiedImageError:
        raise InputError("not an image PIL can read (corrupt?)", file=str(path)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot decode image ({_first_line(exc)})", file=str(path)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else exc.__class__.__name__
