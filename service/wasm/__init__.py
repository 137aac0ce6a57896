"""The wasm host: one engine, compiled guests, and the host ABIs guests import.

host.py      Engine, compiled-module cache, Linker/InstancePre, one fresh Store per run
call.py      per-run state (handles, deadline, diagnostics) that host functions reach
memory.py    bounds-checked, zero-copy access to a guest's linear memory
wasi_nn.py   module `wasi_ephemeral_nn` (witx wasi-nn) over the LiteRT backend
image.py     module `wasmedge_image` (WasmEdge's image plugin ABI) over Pillow
"""
