"""Temporal Pyramid Network model zoo: networks, configs, checkpoints, training and testing."""

from tpn.checkpoint import (
    CheckpointError,
    ClassInfo,
    LoadReport,
    checkpoint_classes,
    init_from_imagenet,
    load_checkpoint,
    read_checkpoint,
)
from tpn.metrics import accuracy, average_views
from tpn.model import Recognizer
from tpn.neck import NeckConfig
from tpn.config import ModelConfig, TrainRecipe
from tpn.zoo import create_model, get_config, list_models

__all__ = [
    "CheckpointError",
    "ClassInfo",
    "LoadReport",
    "ModelConfig",
    "NeckConfig",
    "Recognizer",
    "TrainRecipe",
    "accuracy",
    "average_views",
    "checkpoint_classes",
    "create_model",
    "get_config",
    "init_from_imagenet",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
]
