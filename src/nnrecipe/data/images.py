"""Reading image files: one place that decodes, so training and the audit agree on pixels."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# torchvision's list, copied: importing torchvision costs 1.6 s at start-up
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS


def load_image(path: Path, mode: str = "RGB") -> Image.Image:
    with Image.open(path) as image:
        return image.convert(mode)


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
