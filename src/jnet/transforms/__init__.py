"""The input pipeline shared by cache building, training, evaluation and prediction: slicing and
normalisation (``slicing``), the low-resolution simulation (``lowres``), augmentation (``augment``)
and the task encodings (``tasks``).
"""
