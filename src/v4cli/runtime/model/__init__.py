"""DeepSeek-V4 as plain modules: no I/O, no scheduling. Weights arrive through `runtime.weights`."""

from .model import Transformer

__all__ = ["Transformer"]
