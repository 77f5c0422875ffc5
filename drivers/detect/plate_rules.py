"""What a Chinese plate text may look like, per plate type: a plausibility check that marks, never corrects.

A read is held against the layouts of GA 36 (a province first, then a letter, then letters and
digits; a special character at a fixed place). The layout that the read fits best decides the type;
each character that breaks that layout, and each character the recogniser itself was unsure of,
comes out as ``?`` in the marked text, and the confidence drops. Nothing is ever replaced by a
"likely" character: a reader that guesses 皖 for an unreadable province would match the wrong
vehicle, while ``?`` sends the plate to a person.
"""

from __future__ import annotations

from dataclasses import dataclass

PROVINCES = frozenset("京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼")
LETTERS = frozenset("ABCDEFGHJKLMNPQRSTUVWXYZ")  # I and O are not used on plates
DIGITS = frozenset("0123456789")
ALNUM = LETTERS | DIGITS

# Each layout: a name and one set of allowed characters per position.
_P, _L, _D, _A = PROVINCES, LETTERS, DIGITS, ALNUM
LAYOUTS: tuple[tuple[str, tuple[frozenset[str], ...]], ...] = (
    ("standard", (_P, _L, _A, _A, _A, _A, _A)),
    ("new_energy", (_P, _L, frozenset("DF"), _A, _D, _D, _D, _D)),
    ("new_energy_large", (_P, _L, _D, _D, _D, _D, _D, frozenset("DF"))),
    ("police", (_P, _L, _A, _A, _A, _A, frozenset("警"))),
    ("coach", (_P, _L, _A, _A, _A, _A, frozenset("学"))),
    ("trailer", (_P, _L, _A, _A, _A, _A, frozenset("挂"))),
    ("consulate", (_P, _L, _A, _A, _A, _A, frozenset("领"))),
    ("hk_macau", (frozenset("粤"), frozenset("Z"), _A, _A, _A, _A, frozenset("港澳"))),
    ("embassy", (frozenset("使"), _D, _D, _D, _D, _D, _D)),
    ("embassy_new", (_D, _D, _D, _D, _D, _D, frozenset("使"))),
    ("military", (_L, _L, _D, _D, _D, _D, _D)),
    ("armed_police", (frozenset("W"), frozenset("J"), _D, _D, _A, _A, _A, _A, _A)),
)

UNSURE_CHAR_PROB = 0.35  # a character the recogniser gave less than this is shown as "?"
MAX_MARKED = 2  # more misfits than this and the read is not taken as that layout at all


@dataclass(frozen=True, slots=True)
class PlateVerdict:
    """A read held against the plate layouts: the marked text, its type, and how far it is to be trusted."""

    text: str  # the read with "?" where a character is unsure or breaks the layout
    plate_type: str  # the layout it fits best, or "unknown"
    plausible: bool  # True when it fits a layout with nothing marked
    confidence: float  # the recogniser's confidence, lowered for every marked character


def check(chars: list[tuple[str, float]], confidence: float) -> PlateVerdict:
    """Hold a read (characters with their probabilities) against the layouts; see the module doc."""
    best: tuple[int, str, list[int]] | None = None
    for name, layout in LAYOUTS:
        if len(layout) != len(chars):
            continue
        misfits = [i for i, ((c, _), allowed) in enumerate(zip(chars, layout, strict=True)) if c not in allowed]
        if best is None or len(misfits) < best[0]:
            best = (len(misfits), name, misfits)
    unsure = {i for i, (_, p) in enumerate(chars) if p < UNSURE_CHAR_PROB}
    if best is None or best[0] > MAX_MARKED:
        # No layout of this length (a lost or an extra character) or too far from every one:
        # the text stays as read, its unsure characters marked, and it is not to be trusted.
        marked = "".join("?" if i in unsure else c for i, (c, _) in enumerate(chars))
        return PlateVerdict(marked, "unknown", False, round(confidence * 0.25, 4))
    _, name, misfits = best
    bad = unsure | set(misfits)
    marked = "".join("?" if i in bad else c for i, (c, _) in enumerate(chars))
    return PlateVerdict(marked, name, not bad, round(confidence * (0.5 ** len(bad)), 4))
