"""The DeepSeek-V4 runtime: model, weights, decode state and (soon) the engine."""

from .args import ConfigError, ModelArgs
from .cache import SeqState
from .model import Transformer
from .weights import CheckpointError, load_model

__all__ = ["CheckpointError", "ConfigError", "ModelArgs", "SeqState", "Transformer", "load_model"]
