"""Reading image files: one place that decodes, so training and the audit agree on pixels."""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image

# torchvision's list, copied: importing torchvision costs 1.6 s at start-up
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS


def unreadable_reason(path: Path) -> str | None:
    """Why a file cannot be used as an image (None when it decodes). Reads the whole file."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as image:
            image.load()
    except Exception as e:  # PIL raises many types for bad files; all mean "unusable"
        return f"not a readable image ({type(e).__name__}: {e})"
    return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_resized(data: bytes, in_chans: int, size: int | None, fast: bool = False):
    """File bytes -> uint8 tensor [in_chans, size, size] (size None: as stored).

    `fast`: torchvision.io.decode_image for 8-bit PNGs whose colour type it converts exactly as
    PIL does (1.5-2.7x PIL's rate on 32x32 PNGs, measured on 2 busy cores) -- same pixels, but
    importing torchvision costs 1.6-5 s, so DataLoader workers use it and one-off reads do not.
    Everything else goes through PIL, JPEGs decoded at 1/2-1/8 scale (draft) when the target is
    that much smaller (~2.5x on 256 px JPEGs trained at 32). Resizing: torch's uint8
    antialiased bilinear for both (Pillow's algorithm: the pixels agree to +-1 level).
    """
    import torch

    if fast and _png_exact(data, in_chans):
        from torchvision.io import ImageReadMode, decode_image

        _quiet_torchvision_io()
        mode = ImageReadMode.RGB if in_chans == 3 else ImageReadMode.GRAY
        x = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    else:
        x = _pil_tensor(data, in_chans, size)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear",
                                            antialias=True)[0]
    return x


@functools.cache
def _quiet_torchvision_io() -> None:
    """torchvision 0.29 deprecates its decoders for TorchCodec (not a dependency here): they
    still work and still measure faster than PIL on small PNGs; once per process, no warning."""
    import warnings

    warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of "
                            "TorchVision", DeprecationWarning)


def _png_exact(data: bytes, in_chans: int) -> bool:
    """An 8-bit PNG that decode_image turns into the pixels PIL's convert() gives: grey, RGB
    or RGBA to RGB (alpha dropped, as PIL does), grey to grey. Its RGB->grey weights differ."""
    if data[:8] != PNG_SIGNATURE or len(data) < 26 or data[24] != 8:
        return False
    return data[25] in ((0, 2, 6) if in_chans == 3 else (0,))


# pixel modes wider than 8 bits, and the value that is full scale in each
WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535,
              "F": 1.0}


def converted(image: Image.Image, mode: str) -> Image.Image:
    """`image` in PIL mode `mode` ("RGB" or "L"). PIL's own convert clips 16-bit and float
    pixels to 0..255 (a 16-bit PNG came out 99.6% white): those are scaled from their full
    range (65535; 1.0 for float) to 8 bits first. The pixels are loaded: the file may close."""
    image.load()
    if image.mode in WIDE_MODES:
        import numpy as np

        pixels = np.asarray(image, dtype=np.float32) * (255 / WIDE_MODES[image.mode])
        image = Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8), "L")
    return image if image.mode == mode else image.convert(mode)


def _pil_tensor(data: bytes, in_chans: int, size: int | None):
    from io import BytesIO

    import numpy as np
    import torch

    with Image.open(BytesIO(data)) as image:
        if size is not None and image.format == "JPEG":
            image.draft("RGB" if in_chans == 3 else "L", (size, size))  # never below size
        image = converted(image, "RGB" if in_chans == 3 else "L")
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    return pixels.permute(2, 0, 1).contiguous() if pixels.ndim == 3 else pixels.unsqueeze(0)
