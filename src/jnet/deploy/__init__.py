"""Deployment: export (ONNX, TorchScript, INT8), the runtime ``Predictor`` and its model metadata,
and ``predict`` for files and folders.
"""
