#!/usr/bin/env python3
"""Times one ONNX model in OpenVINO (CPU plugin) for the peer benchmark (benches/peers/src/main.rs).

Settings that make it comparable with sparsec and ONNX Runtime (`../shared/FACTS.md`): float32
inference (`INFERENCE_PRECISION_HINT=f32`, no bf16 or fp16 down-conversion), 2 threads
(`INFERENCE_NUM_THREADS`, from `--threads`), `PERFORMANCE_HINT=LATENCY`, one stream, and the model
reshaped to the batch (static shapes, as sparsec's plan). The command line, the timing loop and
the JSON answer are `peer_timing.py`'s. Needs `openvino` (`bash benches/peers/setup.sh`).
"""

import sys

import peer_timing


def peer(args):
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": args.threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }

    def compile_for(batch):
        model = core.read_model(args.model)
        model.reshape({model.input(0): ov.PartialShape([batch, *peer_timing.IMAGE])})
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        output = compiled.output(0)
        return lambda x: request.infer({0: x}, share_inputs=True)[output]

    return ov.__version__, {"config": {k: str(v) for k, v in config.items()}}, compile_for


if __name__ == "__main__":
    sys.exit(peer_timing.main(__doc__.splitlines()[0], peer))
