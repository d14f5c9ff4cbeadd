"""v4: run DeepSeek-V4 on your own hardware."""

__version__ = "0.1.0"
