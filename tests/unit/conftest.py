"""Unit-only fixtures: tiny hand-built ONNX models and the demo models (no Kafka broker)."""

from __future__ import annotations

import pytest

from tests.onnx_models import OnnxFactory, write_tiny_model


@pytest.fixture
def tiny_model() -> OnnxFactory:
    """Writes a tiny ONNX model (see `write_tiny_model`) and returns its path."""
    return write_tiny_model
