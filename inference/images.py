"""Reading images into the uint8 (C, H, W) arrays a model card asks for, with numpy and PIL only.

Shared by `inference` (files and folders), the deployment bundle's runtime and `moskd serve`
(request bodies), which must not import torch-side training code. Grayscale, RGB, RGBA and palette
images are converted to the card's channels (transparency flattened onto white), resized to the
training size and, for digits models (bright ink on a dark background), inverted when the image
has a light background (`invert="auto"`). Every failure becomes `BadImage` with one line saying why.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class BadImage(Exception):
    """A file or body that cannot be predicted; the message says why."""


def image_extensions() -> set[str]:
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _describe(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return first[:160]


def _to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float grayscale to 8 bits by scaling (PIL's convert would clip at 255)."""
    a = np.asarray(im, dtype=np.float64)
    peak = a.max() if a.size else 0.0
    scale = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return Image.fromarray(np.clip(np.round(a * (255.0 / scale)), 0, 255).astype(np.uint8), "L")


def to_model_mode(im: Image.Image, in_chans: int) -> Image.Image:
    """Any PIL mode to 'L' (1 channel) or 'RGB' (3 channels)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # resolve the palette (and its transparent index)
    if "A" in im.getbands() or "a" in im.getbands():
        # flatten transparency onto white, as it would show on paper or a page
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    if in_chans == 1:
        return im.convert("L")
    if in_chans == 3:
        return im.convert("RGB")
    raise BadImage(f"models taking {in_chans} channels are not supported by inference; use 1 or 3")


def light_background(a: np.ndarray) -> bool:
    """True when the image's outer ring of pixels is mostly bright (ink on paper)."""
    if min(a.shape[-2:]) < 3:
        return False
    ring = np.concatenate([a[..., 0, :].ravel(), a[..., -1, :].ravel(), a[..., :, 0].ravel(), a[..., :, -1].ravel()])
    return float(np.median(ring)) > 127


def preprocess_array(im: Image.Image, card: dict, invert: str = "auto") -> np.ndarray:
    """(C, H, W) uint8 array as the model card expects (before normalisation)."""
    c, h, w = card["input_size"]
    im = to_model_mode(im, c)
    if im.size != (w, h):
        # area averaging when shrinking (how digits' 8x8 images were made); bilinear when enlarging
        shrink = im.width >= w and im.height >= h
        im = im.resize((w, h), Image.BOX if shrink else Image.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    digits = card.get("dataset") == "digits"
    if invert == "yes" or (invert == "auto" and digits and light_background(a)):
        a = 255 - a  # digits have bright ink on a dark background
    return np.ascontiguousarray(a).copy()  # owns its memory (PIL-backed arrays are read-only)


def _decode(source, card: dict, invert: str) -> np.ndarray:
    """Open, fully decode and preprocess `source` (a path or a file object); BadImage on failure."""
    try:
        with Image.open(source) as im:
            im.load()  # decode now: truncated data fails here, not later
            return preprocess_array(im, card, invert)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image format)") from None
    except FileNotFoundError:
        raise BadImage("no such file (or a broken link)") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large to decode safely ({_describe(e)})") from None
    except OSError as e:
        raise BadImage(f"truncated or corrupt image ({_describe(e)})") from None
    except Exception as e:  # noqa: BLE001  any decoder failure means this one image is unusable
        raise BadImage(f"could not decode ({type(e).__name__}: {_describe(e)})") from None


def read_image_array(path: Path, card: dict, invert: str = "auto") -> np.ndarray:
    try:
        if path.is_dir():
            raise BadImage("is a folder inside a file list")
        if path.stat().st_size == 0:
            raise BadImage("empty file")
    except FileNotFoundError:
        raise BadImage("no such file (or a broken link)") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except OSError as e:
        raise BadImage(f"cannot read ({_describe(e)})") from None
    return _decode(path, card, invert)


def decode_bytes(data: bytes, card: dict, invert: str = "auto") -> np.ndarray:
    """A request body or uploaded file to the card's (C, H, W) uint8 array."""
    if not data:
        raise BadImage("empty body: send the image file's bytes")
    return _decode(io.BytesIO(data), card, invert)
