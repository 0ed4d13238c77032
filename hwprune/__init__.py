"""hwprune: hardware-aware structured pruning (WGSEF prox-SGD -> surgery -> ONNX -> timing).

Importing the package is light: no onnx, onnxruntime or tensorrt is imported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
