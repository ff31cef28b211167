"""The ``ppocr-det`` entry: PP-OCRv4's text detector (``ch_PP-OCRv4_det_infer.onnx`` as the PyPI package
``rapidocr-onnxruntime`` ships it, real weights in Constant nodes): image [1, 3, H, W] -> text-probability map
[1, 1, H, W]. Data: text lines rendered with the DejaVu fonts on coloured backgrounds, normalised as RapidOCR
does ((pixel / 255 - 0.5) / 0.5, BGR), one image per file at a fixed size (compile with ``--input-shape``).
Needs the ``ppocr`` extra (rapidocr-onnxruntime, Pillow).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

ABOUT = "PP-OCRv4 text detector (rapidocr-onnxruntime); text images rendered with DejaVu fonts"
NEEDS = ("rapidocr_onnxruntime", "PIL")
HEIGHT, WIDTH = 128, 384  # multiples of 32, as the detector's strides need
# 24 calibration images: error feedback fitted to 4 left more output error on 32 further rendered images, for every
# codec and budget (benchmarks/README.md, nwc_quality.py, stop 20). 40 evaluation images: some images' maps are at a
# knife edge (a text line's straight upper and lower edges flip a whole pixel row under weight errors far below any
# codec's), so the mean cosine over 8 turned on one image (stop 21)
EVAL_IMAGES, CALIBRATION_IMAGES, MORE_EVAL_IMAGES = 8, 24, 32
PHRASES = [
    "Invoice 2024-117", "Total due: 348.20 EUR", "Platform 9, departs 14:05", "OPEN 7 DAYS A WEEK",
    "Fresh bread every morning", "Keep left at the roundabout", "Room 312 - Library", "Batch no. A7-5521",
    "Meeting moved to Thursday", "Exit only", "Serial 00493-XK", "Best before 12/03/27", "Quiet zone",
    "Call 0800 555 010", "Parking for customers", "Second floor: radiology",
]


def fonts() -> list[Path]:
    """The DejaVu fonts of the system, else the ones matplotlib ships."""
    system = sorted(p for p in Path("/usr/share/fonts/truetype/dejavu").glob("DejaVu*.ttf") if "Math" not in p.name)
    if system:
        return system
    import matplotlib

    return sorted(Path(matplotlib.get_data_path(), "fonts", "ttf").glob("DejaVu*.ttf"))


def render(rng: np.random.Generator, faces: list[Path]) -> np.ndarray:
    """One image of two or three text lines, normalised: float32 [1, 3, HEIGHT, WIDTH]."""
    from PIL import Image, ImageDraw, ImageFont

    background = tuple(int(v) for v in rng.integers(170, 256, 3))
    image = Image.new("RGB", (WIDTH, HEIGHT), background)
    draw = ImageDraw.Draw(image)
    lines = int(rng.integers(2, 4))
    for i in range(lines):
        font = ImageFont.truetype(str(faces[int(rng.integers(len(faces)))]), int(rng.integers(18, 28)))
        colour = tuple(int(v) for v in rng.integers(0, 90, 3))
        top = 8 + i * (HEIGHT - 16) // lines + int(rng.integers(0, 6))
        draw.text((int(rng.integers(6, 60)), top), PHRASES[int(rng.integers(len(PHRASES)))], fill=colour, font=font)
    pixels = np.asarray(image, np.float32)[..., ::-1]  # RGB -> BGR, as OpenCV reads images for RapidOCR
    return ((pixels / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)


def build(folder: Path) -> dict:
    import rapidocr_onnxruntime

    shutil.copyfile(Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx",
                    folder / "model.onnx")
    rng, faces = np.random.default_rng(0), fonts()
    # one stream, each set drawn after the sets before it: a set grown at its end leaves every earlier file as it was
    draws = (("data", 0, EVAL_IMAGES), ("calibration", 0, CALIBRATION_IMAGES),
             ("data", EVAL_IMAGES, MORE_EVAL_IMAGES))
    for subfolder, first, count in draws:
        for i in range(first, first + count):
            np.savez(folder / subfolder / f"{i:02d}.npz", x=render(rng, faces))
    return {"source": "rapidocr-onnxruntime (PyPI): ch_PP-OCRv4_det_infer.onnx", "task": "text-map cosine to fp32",
            "compile_options": ["--input-shape", f"x:1x3x{HEIGHT}x{WIDTH}"]}
