"""Model registry and built-in models (MLP, LeNet-5, DigitsCNN, VGG, ResNet-20/56, MobileNetV2, tiny ViT, ConvNeXt).

Importing this package registers every built-in model; see :func:`create_model`.
"""

from __future__ import annotations

from hwprune.models import cnn as _cnn  # noqa: F401  (registers models)
from hwprune.models import convnext as _convnext  # noqa: F401
from hwprune.models import mobilenet as _mobilenet  # noqa: F401
from hwprune.models import resnet as _resnet  # noqa: F401
from hwprune.models import vit as _vit  # noqa: F401
from hwprune.models.blocks import BasicBlock, ResidualBlock
from hwprune.models.complexity import count_params_and_macs
from hwprune.models.registry import create_model, is_model, list_models, model_from_spec, register_model

__all__ = [
    "register_model",
    "list_models",
    "create_model",
    "model_from_spec",
    "is_model",
    "ResidualBlock",
    "BasicBlock",
    "count_params_and_macs",
]
