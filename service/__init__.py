"""Image classification for Dapr: WebAssembly business logic over TensorFlow Lite host functions."""

__version__ = "0.1.0"
