"""Golden GY-MCU90640 frames with hand-checked temperatures."""

from __future__ import annotations

GOLDEN_1_HEX = "5A5A0206" + "C409" * 768 + "B80B" + "14B8"  # uniform 25.00 °C, Ta 30.00


GOLDEN_3_HEX = (  # 22.50 °C background, -5.50 °C first word, 40.00 °C at byte offset 804, Ta 26.00
    "5A5A0206" + "DAFD" + "CA08" * 399 + "A00F" + "CA08" * 367 + "280A" + "6AC4"
)


GOLDEN_1 = bytes.fromhex(GOLDEN_1_HEX)


GOLDEN_3 = bytes.fromhex(GOLDEN_3_HEX)
