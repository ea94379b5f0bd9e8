"""A Ray Serve application serving a sparsec model.bin over HTTP (issue 15).

POST / with an image [C, H, W] float32 as an .npy body (Content-Type: application/x-npy) or as
JSON ({"image": nested lists}); the answer is JSON {"logits": [...]} with the float32 logits.
Requests are batched dynamically (@serve.batch) into one `session.run` per batch.

Arguments (``serve run examples.serve.app:app model=model.bin replicas=2`` or a config file,
see README.md here): model (a model.bin path, required), replicas (default 1), threads (CPU
threads per replica session, default 1), max_batch (largest dynamic batch, default 16, at most
the model's), wait_ms (how long a batch waits to fill, default 5), replicas_per_node (at most
this many replicas on one node of a cluster; default: Ray decides).
"""

from __future__ import annotations

import io
import json

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

import sparsec


@serve.deployment
class Classifier:
    def __init__(self, model: str, threads: int, max_batch: int, wait_ms: float):
        self.model = sparsec.Model.load(model)
        self.session = self.model.session(threads=threads)
        self.infer.set_max_batch_size(min(max_batch, self.model.max_batch))
        self.infer.set_batch_wait_timeout_s(wait_ms / 1000.0)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def infer(self, images: list[np.ndarray]) -> list[np.ndarray]:
        # One runtime call for the whole dynamic batch; each image's result is independent of
        # the batch it ran in (the runtime is bit-identical across batch splits).
        return list(self.session.run(np.stack(images)))

    async def __call__(self, request: Request) -> JSONResponse:
        body = await request.body()
        try:
            if "json" in request.headers.get("content-type", ""):
                image = np.asarray(json.loads(body)["image"], dtype=np.float32)
            else:
                image = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, KeyError, OSError) as e:
            return JSONResponse({"error": f"cannot read the body: {e}"}, status_code=400)
        if image.dtype != np.float32 or image.shape != self.model.input_shape:
            return JSONResponse(
                {"error": f"expected a float32 image of shape {list(self.model.input_shape)}, "
                          f"got {image.dtype} {list(image.shape)}"},
                status_code=400,
            )
        logits = await self.infer(np.ascontiguousarray(image))
        return JSONResponse({"logits": logits.tolist()})


def app(args: dict[str, str]) -> serve.Application:
    """The application builder: ``serve run examples.serve.app:app model=...`` passes args."""
    max_batch = int(args.get("max_batch", 16))
    options = {
        "num_replicas": int(args.get("replicas", 1)),
        # Ray's default (5 in flight per replica) would cap every dynamic batch at 5.
        "max_ongoing_requests": 2 * max_batch,
    }
    if "replicas_per_node" in args:
        options["max_replicas_per_node"] = int(args["replicas_per_node"])
    return Classifier.options(**options).bind(
        args["model"],
        int(args.get("threads", 1)),
        max_batch,
        float(args.get("wait_ms", 5)),
    )
