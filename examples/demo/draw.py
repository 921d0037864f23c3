"""Draw the demo video's frames, in a process of its own.

Run by the demo's ``render_video`` as ``python draw.py SPEC FOLDER``: ``SPEC`` is a JSON
object (``width``, ``height``, ``fps``, ``seconds``, and the validated
form's ``month``, ``year`` and ``books``). It writes ``00000.png``,
``00001.png``, ... into ``FOLDER`` and prints ``frame=<n>`` after each, the
same ``key=value`` lines ffmpeg's ``-progress`` writes, so the job reads
both children's progress the same way.

Drawing is pure CPU work. In the web worker's own process it would hold
the interpreter lock against the hub that writes every stream's events;
here it holds only its own, and it runs at the lower CPU priority its
parent gave it, so the worker's socket writes win the cores.
"""

from __future__ import annotations

import calendar
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["draw_frames", "frames", "main"]


def frames(spec: dict[str, Any]) -> Iterator[Any]:
    """Yield the video's frames as Pillow images."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = int(spec["width"]), int(spec["height"])
    scale = height / 360
    font_big = ImageFont.load_default(size=round(42 * scale))
    font = ImageFont.load_default(size=round(26 * scale))
    title = f"{calendar.month_name[spec['month']]} {spec['year']}"
    books: list[str] = spec["books"]
    total = round(spec["fps"] * spec["seconds"])
    for index in range(total):
        t = index / max(1, total - 1)
        image = Image.new("RGB", (width, height), (15, 23, 42))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, round(width * t), round(8 * scale)), fill=(37, 99, 235))
        draw.text((32 * scale, 28 * scale), title, font=font_big, fill=(248, 250, 252))
        shown = min(len(books), 1 + int(t * len(books)))
        for row, book in enumerate(books[:shown]):
            slide = min(1.0, (t * len(books) - row) * 2) if row == shown - 1 else 1.0
            x = 32 * scale + round((1 - max(0.0, slide)) * width / 3)
            y = (100 + row * 32) * scale
            draw.text((x, y), f"{row + 1}. {book}", font=font, fill=(203, 213, 225))
        yield image


def draw_frames(spec: dict[str, Any], folder: Path) -> None:
    """Save every frame as a numbered PNG, printing ``frame=<n>`` after each."""
    for index, image in enumerate(frames(spec)):
        image.save(folder / f"{index:05d}.png", compress_level=1)
        print(f"frame={index + 1}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python draw.py SPEC_JSON FOLDER", file=sys.stderr)
        return 2
    draw_frames(json.loads(args[0]), Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
