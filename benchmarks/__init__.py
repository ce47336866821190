"""Benchmarks for streamer (run each as `python -m benchmarks.<name>`)."""
