"""Evaluation: the metrics, evaluating a model on a cache or a folder, and the overlays."""
