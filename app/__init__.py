"""Autoencoder inference service: FastAPI over a registry of ONNX Runtime sessions. Entry point: `create_app`."""

__version__ = "0.1.0"
