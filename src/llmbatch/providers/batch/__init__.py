"""Batch-channel clients (OpenAI Files + Batches, Anthropic Message Batches, Gemini batch mode)."""

from __future__ import annotations

from ..base import Adapter
from .base import CANCELLED, ERRORED, EXPIRED, SUCCEEDED, BatchClient, BatchState, LineResult, Limits


def batch_client(adapter: Adapter) -> BatchClient | None:
    """The batch client for an adapter's API, or None when the API has no batch channel."""
    from .anthropic import AnthropicBatches
    from .gemini import GeminiBatches
    from .openai import OpenAIBatches

    classes: dict[str, type[BatchClient]] = {
        "openai": OpenAIBatches,
        "anthropic": AnthropicBatches,
        "gemini": GeminiBatches,
    }
    cls = classes.get(adapter.api)
    return cls(adapter) if cls is not None else None


__all__ = [
    "BatchClient",
    "BatchState",
    "LineResult",
    "Limits",
    "batch_client",
    "SUCCEEDED",
    "ERRORED",
    "CANCELLED",
    "EXPIRED",
]
