"""The peer: the plain Dapr gRPC app a user would otherwise write, no wasm.

    python -m bench.peer PORT NAME=MODEL.tflite [NAME=MODEL.tflite ...]

The same SDK `App` as `classifier serve`, its thread pool sized to the cores as the service's
is, one method per model, named after it (the SDK's `App` hands a method no query string), the
raw image in the body, the top 5 in a JSON answer like the service's. It decodes with the
service's own Pillow settings (`service/imaging.py`: draft mode + bilinear resize) and calls
LiteRT directly, one 1-thread interpreter per worker thread (built at start). The benchmark
runs it in its own process next to the service and reports the service's p50 and throughput
as ratios to it: the price of the sandbox.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from dapr.ext.grpc import App, InvokeMethodRequest, InvokeMethodResponse

from service.imaging import decode_rgb
from service.inference.labels import labels_from_metadata
from service.inference.litert import Interpreter, new_interpreter

TOP_K = 5


class PeerModel:
    """One model: its bytes, labels and one interpreter per thread."""

    def __init__(self, model: bytes) -> None:
        self.model = model
        self._local = threading.local()
        first = self.interpreter()
        detail = first.get_input_details()[0]
        self.input_index = detail["index"]
        self.height, self.width = int(detail["shape"][1]), int(detail["shape"][2])
        out = first.get_output_details()[0]
        self.output_index = out["index"]
        self.scale, self.zero_point = out["quantization"]
        self.labels = labels_from_metadata(model, int(out["shape"][-1])) or []

    def interpreter(self) -> Interpreter:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = self._local.interpreter = new_interpreter(self.model, 1)
        return interpreter

    def classify(self, image: bytes, top_k: int) -> list[dict[str, object]]:
        interpreter = self.interpreter()
        pixels = decode_rgb(image, self.width, self.height)
        interpreter.set_tensor(self.input_index, pixels[None])
        interpreter.invoke()
        raw = interpreter.get_tensor(self.output_index)[0]
        scores = (raw.astype(np.float32) - self.zero_point) * self.scale if self.scale else raw
        top = np.argpartition(scores, -top_k)[-top_k:]
        return [
            {
                "index": int(i),
                "label": self.labels[i] if i < len(self.labels) else None,
                "score": round(float(scores[i]), 6),
            }
            for i in top[np.argsort(scores[top])[::-1]]
        ]


def main(argv: list[str]) -> int:
    port, models = int(argv[0]), dict(arg.split("=", 1) for arg in argv[1:])
    loaded = {name: PeerModel(Path(path).read_bytes()) for name, path in models.items()}
    workers = os.cpu_count() or 2
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="peer")
    barrier = threading.Barrier(workers)

    def warm() -> None:  # an interpreter per model on every worker thread, as the service does
        barrier.wait(timeout=30)
        for model in loaded.values():
            model.interpreter()

    for future in [pool.submit(warm) for _ in range(workers)]:
        future.result()
    app = App(
        thread_pool=pool,
        options=[("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 32 << 20)],
    )

    for name, model in loaded.items():

        def classify(request: InvokeMethodRequest, name: str = name, model: PeerModel = model) -> object:
            body = {"model": name, "predictions": model.classify(request.data, TOP_K)}
            return InvokeMethodResponse(json.dumps(body).encode(), "application/json")

        app.method(name)(classify)
    app.register_health_check(lambda: None)
    app.run(port, "127.0.0.1")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
