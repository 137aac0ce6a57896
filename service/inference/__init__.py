"""TensorFlow Lite inference (LiteRT): models, their tensor specs, interpreter pools."""
