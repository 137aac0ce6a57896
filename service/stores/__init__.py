"""Where models come from: a local directory (the embedded default) or a Dapr state store."""
