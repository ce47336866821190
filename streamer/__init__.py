"""streamer: streaming ML inference on Apache Kafka (micro-batched ONNX, variants, lake)."""
