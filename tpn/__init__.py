"""Temporal Pyramid Network model zoo: networks, configs, checkpoints, training and testing."""

from tpn.checkpoint import CheckpointError, LoadReport, init_from_imagenet, load_checkpoint
from tpn.model import Recognizer
from tpn.neck import NeckConfig
from tpn.zoo import ModelConfig, TrainRecipe, create_model, get_config, list_models

__all__ = [
    "CheckpointError",
    "LoadReport",
    "ModelConfig",
    "NeckConfig",
    "Recognizer",
    "TrainRecipe",
    "create_model",
    "get_config",
    "init_from_imagenet",
    "list_models",
    "load_checkpoint",
]
