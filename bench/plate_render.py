"""Rendered Chinese plates for the plate evaluation set: ``python -m bench.plate_render OUT_DIR``.

Each plate is drawn in the layout of GA 36 (sizes in millimetres at 2 px/mm: 440×140 single row,
480×140 new-energy, 440×220 double row), in the colours of its kind, then dirtied, put on a drawn
vehicle front in a frame of 640×480 up to 2592×2112 (several vehicles on the large frames), seen at an
angle, and degraded by night, rain, blur or JPEG. The frames and their labels (``manifest.csv``
rows) are fixed by the seed: rerunning writes the same set.

Fonts (only needed to regenerate the set; the committed JPEGs are what the bench and tests read):
hanzi from Droid Sans Fallback (Debian ``fonts-droid-fallback``, Apache-2.0), letters and digits from
DejaVu Sans Condensed Bold (Debian ``fonts-dejavu-extra``, Bitstream Vera licence). Both allow the
rendered pictures to be redistributed. Pillow rasterises the glyphs (it comes with matplotlib in
the dev environment; the product does not import this module).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HANZI_FONT = Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf")
LATIN_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf")
PX_PER_MM = 2

# BGR colours of each kind: background, characters, border; red for the special characters.
BLUE_BG, YELLOW_BG, WHITE_BG, BLACK_BG = (180, 70, 10), (20, 190, 245), (235, 235, 235), (25, 25, 25)
WHITE, BLACK, RED = (245, 245, 245), (20, 20, 20), (30, 30, 200)

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, no O on plates
DIGITS = "0123456789"


@dataclass(frozen=True, slots=True)
class Glyph:
    """One character cell on the plate: text, box (x, y, w, h) in mm, colour."""

    char: str
    box: tuple[float, float, float, float]
    colour: tuple[int, int, int]


@dataclass
class PlateSpec:
    """A plate to draw: its text, kind, and the drawn layout."""

    text: str
    kind: str
    size_mm: tuple[int, int]
    background: Any
    border: tuple[int, int, int]
    glyphs: list[Glyph] = field(default_factory=list)
    dots: list[tuple[float, float]] = field(default_factory=list)


def _single_row(text: str, colours: list[tuple[int, int, int]], width_mm: int = 440) -> tuple[list[Glyph], list[tuple[float, float]]]:
    """Lay out a single-row plate: 2 characters, a dot, then the rest (7 or 8 characters)."""
    n = len(text)
    if n == 7:
        cw, gap, dot_gap = 45.0, 12.0, 34.0
    else:
        cw, gap, dot_gap = 43.0, 9.0, 49.0
    used = n * cw + (n - 2) * gap + dot_gap
    x = (width_mm - used) / 2
    glyphs = []
    dots = []
    for i, ch in enumerate(text):
        glyphs.append(Glyph(ch, (x, 25.0, cw, 90.0), colours[i]))
        x += cw + (dot_gap if i == 1 else gap)
        if i == 1:
            dots.append((x - dot_gap / 2, 70.0))
    return glyphs, dots


def plate_spec(text: str, kind: str) -> PlateSpec:
    """Return the layout of ``text`` as a plate of ``kind`` (see ``KINDS``)."""
    n = len(text)
    if kind == "yellow_double" or kind == "trailer":
        top = [Glyph(text[0], (110.0, 15.0, 80.0, 60.0), BLACK), Glyph(text[1], (250.0, 15.0, 80.0, 60.0), BLACK)]
        bottom = text[2:]
        cw, gap = 65.0, 15.0
        x = (440 - (len(bottom) * cw + (len(bottom) - 1) * gap)) / 2
        rows = [*top]
        for ch in bottom:
            rows.append(Glyph(ch, (x, 90.0, cw, 110.0), RED if ch == "挂" else BLACK))
            x += cw + gap
        return PlateSpec(text, kind, (440, 220), YELLOW_BG, BLACK, rows, [(220.0, 45.0)])
    if kind == "green":
        glyphs, dots = _single_row(text, [BLACK] * n, 480)
        return PlateSpec(text, kind, (480, 140), "green", (40, 120, 40), glyphs, dots)
    if kind == "blue":
        colours, bg, border = [WHITE] * n, BLUE_BG, WHITE
    elif kind in ("yellow", "coach"):
        colours, bg, border = [BLACK] * n, YELLOW_BG, BLACK
        if kind == "coach":
            colours[-1] = RED
    elif kind == "police":
        colours, bg, border = [BLACK] * (n - 1) + [RED], WHITE_BG, BLACK
    elif kind == "military":
        colours, bg, border = [RED, RED] + [BLACK] * (n - 2), WHITE_BG, BLACK
    elif kind in ("embassy", "consulate", "hk_macau"):
        colours, bg, border = [WHITE] * n, BLACK_BG, WHITE
        if kind == "embassy":
            colours[0] = RED
    else:
        raise ValueError(f"unknown plate kind {kind!r}")
    glyphs, dots = _single_row(text, colours)
    return PlateSpec(text, kind, (440, 140), bg, border, glyphs, dots)


_FONT_CACHE: dict[tuple[str, int], Any] = {}


def _glyph_mask(ch: str, w: int, h: int) -> np.ndarray:
    """Rasterise one character stretched to fill w×h pixels (plate characters are tall and narrow)."""
    from PIL import Image, ImageDraw, ImageFont

    hanzi = ord(ch) > 0x2E80
    path = HANZI_FONT if hanzi else LATIN_FONT
    size = 160
    key = (str(path), size)
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = ImageFont.truetype(str(path), size)
    font = _FONT_CACHE[key]
    img = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(img).text((size // 2, size // 4), ch, font=font, fill=255)
    a = np.array(img)
    ys, xs = np.nonzero(a > 40)
    a = a[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    if hanzi:  # Droid Sans Fallback is a regular weight: plate hanzi are bold
        a = cv2.dilate(a, np.ones((5, 5), np.uint8))
    if ch == "1":  # a "1" keeps its own width, centred in the cell
        iw = max(1, round(h * a.shape[1] / a.shape[0]))
        inner = cv2.resize(a, (min(w, iw), h), interpolation=cv2.INTER_AREA)
        out = np.zeros((h, w), np.uint8)
        x0 = (w - inner.shape[1]) // 2
        out[:, x0 : x0 + inner.shape[1]] = inner
        return out
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)


def draw_plate(spec: PlateSpec) -> np.ndarray:
    """Draw the plate face-on, BGR, at ``PX_PER_MM``."""
    wmm, hmm = spec.size_mm
    w, h = wmm * PX_PER_MM, hmm * PX_PER_MM
    if isinstance(spec.background, str):  # new-energy: white-green at the top to green at the bottom
        t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        top, bottom = np.array([225, 250, 235], np.float32), np.array([90, 200, 60], np.float32)
        img = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).astype(np.uint8).copy()
    else:
        img = np.full((h, w, 3), spec.background, np.uint8)
    r = 6 * PX_PER_MM
    cv2.rectangle(img, (r // 2, r // 2), (w - r // 2, h - r // 2), spec.border, 2 * PX_PER_MM)
    for g in spec.glyphs:
        x, y, gw, gh = (round(v * PX_PER_MM) for v in g.box)
        mask = _glyph_mask(g.char, gw, gh).astype(np.float32)[..., None] / 255.0
        roi = img[y : y + gh, x : x + gw].astype(np.float32)
        img[y : y + gh, x : x + gw] = (roi * (1 - mask) + np.array(g.colour, np.float32) * mask).astype(np.uint8)
    colour = spec.glyphs[-1].colour if spec.kind not in ("military", "police", "coach", "embassy") else spec.glyphs[2].colour
    for cx, cy in spec.dots:
        cv2.circle(img, (round(cx * PX_PER_MM), round(cy * PX_PER_MM)), 3 * PX_PER_MM, colour, -1, cv2.LINE_AA)
    # Rivets near the top edge, as on a mounted plate.
    for fx in (0.2, 0.8):
        cv2.circle(img, (round(w * fx), 9 * PX_PER_MM), 3 * PX_PER_MM, (150, 150, 150), -1, cv2.LINE_AA)
    return img


def dirty(plate: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Mud spots and a grey film over the plate (``amount`` 0–1)."""
    h, w = plate.shape[:2]
    film = np.full_like(plate, (90, 110, 120))
    out = cv2.addWeighted(plate, 1 - 0.35 * amount, film, 0.35 * amount, 0)
    for _ in range(int(25 * amount)):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        ax = (int(rng.integers(3, 18)), int(rng.integers(2, 10)))
        cv2.ellipse(out, c, ax, float(rng.uniform(0, 180)), 0, 360, (60, 80, 95), -1, cv2.LINE_AA)
    return cv2.GaussianBlur(out, (3, 3), 0)


# -- scenes ------------------------------------------------------------------------------------------


def background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a road and a wall of buildings behind it: grey gradients, lane marks, fine noise."""
    img = np.zeros((h, w, 3), np.uint8)
    horizon = int(h * rng.uniform(0.25, 0.4))
    sky = np.linspace(200, 150, horizon, dtype=np.float32)[:, None, None] * np.array([1.0, 0.97, 0.9], np.float32)
    img[:horizon] = np.broadcast_to(sky, (horizon, w, 3)).astype(np.uint8)
    road = np.linspace(95, 130, h - horizon, dtype=np.float32)[:, None, None] * np.array([1.0, 1.0, 1.02], np.float32)
    img[horizon:] = np.broadcast_to(road, (h - horizon, w, 3)).astype(np.uint8)
    for k in range(int(rng.integers(3, 8))):  # buildings
        x = int(rng.integers(0, w))
        bw, bh = int(rng.integers(w // 12, w // 4)), int(rng.integers(horizon // 3, horizon))
        tone = int(rng.integers(110, 190))
        cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon), (tone, tone, tone - 10 * (k % 2)), -1)
    for x in range(0, w, max(40, w // 8)):  # lane marks
        cv2.line(img, (x, h - 1), (w // 2 + (x - w // 2) // 4, horizon), (200, 200, 200), max(2, w // 400))
    noise = rng.normal(0, 4, img.shape).astype(np.int16)
    out: np.ndarray = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out


def draw_vehicle(img: np.ndarray, cx: int, bottom: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
    """Draw a vehicle front; return the centre (x, y) of where its plate goes."""
    colours = [(30, 30, 30), (220, 220, 225), (40, 40, 170), (150, 100, 40), (120, 120, 120), (200, 200, 200)]
    body = colours[int(rng.integers(0, len(colours)))]
    h = int(width * rng.uniform(0.75, 0.9))
    x1, x2, y1 = cx - width // 2, cx + width // 2, bottom - h
    cv2.rectangle(img, (x1 + width // 10, y1), (x2 - width // 10, y1 + h // 3), tuple(int(c * 0.8) for c in body), -1)
    cv2.rectangle(img, (x1 + width // 6, y1 + h // 20), (x2 - width // 6, y1 + h // 3 - h // 20), (70, 60, 55), -1)  # windscreen
    cv2.rectangle(img, (x1, y1 + h // 3), (x2, bottom - h // 12), body, -1)
    grille_y = y1 + int(h * 0.52)
    cv2.rectangle(img, (cx - width // 4, grille_y), (cx + width // 4, grille_y + h // 9), (35, 35, 35), -1)
    for hx in (x1 + width // 8, x2 - width // 8):
        cv2.ellipse(img, (hx, grille_y + h // 18), (width // 10, h // 22), 0, 0, 360, (230, 235, 240), -1)
    cv2.rectangle(img, (x1 + width // 12, bottom - h // 12), (x1 + width // 4, bottom), (20, 20, 20), -1)  # wheels
    cv2.rectangle(img, (x2 - width // 4, bottom - h // 12), (x2 - width // 12, bottom), (20, 20, 20), -1)
    return cx, y1 + int(h * 0.78)


def place_plate(
    img: np.ndarray, plate: np.ndarray, centre: tuple[int, int], width: float, yaw: float, pitch: float, roll: float
) -> np.ndarray:
    """Warp the plate into ``img`` at ``centre``, ``width`` px wide, turned by the angles (radians); return its quad."""
    height = width * plate.shape[0] / plate.shape[1]
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * np.array([width / 2, height / 2], np.float32)
    # Yaw narrows one side, pitch the top or bottom: a cheap pin-hole view of a turned rectangle.
    quad = half.copy()
    quad[:, 1] *= 1 + np.sign(quad[:, 0]) * math.sin(yaw) * 0.25
    quad[:, 0] *= math.cos(yaw)
    quad[:, 0] *= 1 + np.sign(quad[:, 1]) * math.sin(pitch) * 0.2
    rot = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]], np.float32)
    quad = quad @ rot.T + np.array(centre, np.float32)
    h, w = img.shape[:2]
    # Shrink first (area average), then warp: a direct warp of the 880 px drawing would alias.
    small = cv2.resize(plate, (max(8, int(width * 2)), max(4, int(height * 2))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], np.float32)
    m = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    warped = cv2.warpPerspective(small, m, (w, h), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full(small.shape[:2], 255, np.uint8), m, (w, h), flags=cv2.INTER_LINEAR)
    a = mask.astype(np.float32)[..., None] / 255.0
    img[:] = (img.astype(np.float32) * (1 - a) + warped.astype(np.float32) * a).astype(np.uint8)
    return quad


def degrade(img: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    """Apply the frame-wide condition: clean, blur, motion, night, rain or dirt (dirt is on the plate)."""
    if condition == "blur":
        k = int(rng.integers(2, 4)) * 2 + 1
        return cv2.GaussianBlur(img, (k, k), 0)
    if condition == "motion":
        k = int(rng.integers(7, 13))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        return cv2.filter2D(img, -1, kernel)
    if condition == "night":
        dark = (img.astype(np.float32) * rng.uniform(0.25, 0.4)) ** 1.1
        noise = rng.normal(0, 6, img.shape)
        out = np.clip(dark + noise, 0, 255).astype(np.uint8)
        return cv2.GaussianBlur(out, (3, 3), 0)
    if condition == "rain":
        out = img.copy()
        h, w = img.shape[:2]
        for _ in range(int(w * h / 2500)):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            length = int(rng.integers(h // 60 + 5, h // 25 + 10))
            cv2.line(out, (x, y), (x + length // 6, y + length), (200, 200, 205), 1, cv2.LINE_AA)
        misted = cv2.addWeighted(out, 0.8, np.full_like(out, 170), 0.2, 0)
        return cv2.GaussianBlur(misted, (3, 3), 0)
    return img


@dataclass(frozen=True, slots=True)
class FramePlan:
    """One frame of the set: size, condition, the plates on its vehicles."""

    name: str
    size: tuple[int, int]
    condition: str
    plates: tuple[tuple[str, str], ...]  # (text, kind)


def random_text(kind: str, rng: np.random.Generator) -> str:
    """Return a plausible plate text of ``kind``."""
    prov = PROVINCES[int(rng.integers(0, len(PROVINCES)))]
    letter = LETTERS[int(rng.integers(0, len(LETTERS)))]

    def alnum(n: int, letters: int = 2) -> str:
        chars = [DIGITS[int(rng.integers(0, 10))] for _ in range(n)]
        for i in rng.choice(n, size=int(rng.integers(0, letters + 1)), replace=False):
            chars[int(i)] = LETTERS[int(rng.integers(0, len(LETTERS)))]
        return "".join(chars)

    def digits(n: int) -> str:
        return "".join(DIGITS[int(rng.integers(0, 10))] for _ in range(n))

    if kind in ("blue", "yellow", "yellow_double"):
        return prov + letter + alnum(5)
    if kind == "green":  # small new-energy: D or F, then a letter or digit, then four digits
        return prov + letter + "DF"[int(rng.integers(0, 2))] + alnum(1, 1) + digits(4)
    if kind == "police":
        return prov + letter + digits(4) + "警"
    if kind == "coach":
        return prov + letter + alnum(4, 1) + "学"
    if kind == "trailer":
        return prov + letter + digits(4) + "挂"
    if kind == "hk_macau":
        return "粤Z" + alnum(4, 1) + "港澳"[int(rng.integers(0, 2))]
    if kind == "embassy":
        return "使" + digits(6)
    if kind == "consulate":
        return prov + "A" + digits(4) + "领"
    if kind == "military":
        return LETTERS[int(rng.integers(0, len(LETTERS)))] + letter + digits(5)
    raise ValueError(kind)


KINDS = ("blue", "yellow", "yellow_double", "green", "police", "military", "embassy", "consulate", "coach", "trailer", "hk_macau")
CONDITIONS = ("clean", "blur", "motion", "night", "rain", "dirt")
# (width, height, vehicles per frame, how many frames)
FRAME_SIZES = ((640, 480, 1, 33), (1280, 720, 2, 8), (1920, 1080, 2, 5), (2592, 2112, 3, 5))


def plan(seed: int = 17) -> list[FramePlan]:
    """Return the whole rendered set: every kind in every frame size, conditions in turn."""
    rng = np.random.default_rng(seed)
    frames: list[FramePlan] = []
    k = 0
    for w, h, vehicles, count in FRAME_SIZES:
        for _ in range(count):
            plates = []
            for _ in range(vehicles):
                kind = KINDS[k % len(KINDS)]
                k += 1
                plates.append((random_text(kind, rng), kind))
            condition = CONDITIONS[len(frames) % len(CONDITIONS)]
            frames.append(FramePlan(f"r{len(frames):03d}-{w}x{h}-{condition}.jpg", (w, h), condition, tuple(plates)))
    return frames


def render_frame(fp: FramePlan, seed: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one frame of the plan; return it and one label per plate (text, type, box)."""
    rng = np.random.default_rng(seed)
    w, h = fp.size
    img = background(w, h, rng)
    n = len(fp.plates)
    labels = []
    slot = w / n
    for i, (text, kind) in enumerate(fp.plates):
        # A vehicle a third to three quarters of its slot wide, nearer (lower, larger) in turn.
        vw = int(slot * rng.uniform(0.5, 0.8)) if n > 1 else int(w * rng.uniform(0.45, 0.7))
        cx = int(slot * (i + 0.5) + rng.uniform(-0.08, 0.08) * slot)
        bottom = int(h * rng.uniform(0.82, 0.97))
        pcx, pcy = draw_vehicle(img, cx, bottom, vw, rng)
        plate = draw_plate(plate_spec(text, kind))
        if fp.condition == "dirt":
            plate = dirty(plate, rng, float(rng.uniform(0.5, 1.0)))
        pw = vw * rng.uniform(0.28, 0.36)
        if kind in ("yellow_double", "trailer"):
            pw *= 0.9
        quad = place_plate(
            img, plate, (pcx, pcy), pw, float(rng.uniform(-0.45, 0.45)), float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.08, 0.08))
        )
        x1, y1 = quad.min(axis=0)
        x2, y2 = quad.max(axis=0)
        labels.append({"text": text, "type": kind, "box": [round(float(v), 1) for v in (x1, y1, x2, y2)]})
    img = degrade(img, fp.condition, rng)
    return img, labels


def split_of(file: str) -> str:
    """Return the fixed split of a file: held out when the first byte of sha1(name) is even, else tune."""
    return "heldout" if hashlib.sha1(file.encode()).digest()[0] % 2 == 0 else "tune"


def main() -> None:
    """Write the rendered frames and their manifest rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for the JPEGs (tests/data/plates/rendered)")
    parser.add_argument("--manifest", type=Path, help="CSV to write the rendered rows to")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, fp in enumerate(plan(args.seed)):
        img, labels = render_frame(fp, args.seed * 1000 + i)
        quality = 85 if fp.size[0] <= 640 else 80
        cv2.imwrite(str(args.out / fp.name), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        for lab in labels:
            rows.append(
                {
                    "file": f"rendered/{fp.name}",
                    "text": lab["text"],
                    "type": lab["type"],
                    "box": " ".join(str(v) for v in lab["box"]),
                    "source": "rendered",
                    "condition": fp.condition,
                    "split": split_of(fp.name),
                    "readable": "yes",
                }
            )
    if args.manifest:
        with args.manifest.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"{len(rows)} plates in {len(plan(args.seed))} frames -> {args.out}")


if __name__ == "__main__":
    main()
