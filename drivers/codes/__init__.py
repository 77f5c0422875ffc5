"""Adapters that find and read codes in camera frames (zxing-cpp, OpenCV, pyzbar), and redact them from pictures."""
