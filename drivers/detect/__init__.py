"""Adapters that find faces (UltraFace ONNX, Haar cascade) and read number plates in camera frames."""
