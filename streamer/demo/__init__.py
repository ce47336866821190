"""The demo: synthetic transactions, model training and the `streamer demo` runner."""
