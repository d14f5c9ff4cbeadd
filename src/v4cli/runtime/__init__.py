"""The DeepSeek-V4 runtime: model, weights, decode state and the engine."""

from .args import ConfigError, ModelArgs
from .cache import SeqState
from .engine import ContextLimitError, Engine, Event, GenerationResult, Usage
from .model import Transformer
from .sampler import SamplingParams
from .weights import CheckpointError, load_model

__all__ = [
    "CheckpointError", "ConfigError", "ContextLimitError", "Engine", "Event", "GenerationResult", "ModelArgs",
    "SamplingParams", "SeqState", "Transformer", "Usage", "load_model",
]
