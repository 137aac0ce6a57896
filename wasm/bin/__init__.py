"""Built guests (wasm/bin), shipped inside the package as service.guests."""
