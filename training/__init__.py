"""Offline training and ONNX export of the autoencoders served by `app`."""
