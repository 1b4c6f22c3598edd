"""Inference engines beyond ONNX Runtime and PyTorch (sparse kernels, DeepSparse)."""
