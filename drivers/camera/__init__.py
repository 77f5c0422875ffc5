"""Adapter for the visible-light camera (OpenCV capture of a V4L2 device, file or stream)."""
