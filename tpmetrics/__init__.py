"""Metrics layer for LLM inference on Ray with tensor and data parallelism."""

__version__ = "0.1.0"
