#!/usr/bin/env python3
"""Times one ONNX model in ONNX Runtime (CPU) for the peer benchmark (benches/peers/src/main.rs).

Settings match the sparsec side: intra-op threads as given (2 by default), one inter-op thread,
sequential execution, all graph optimisations on. The command line, the timing loop and the JSON
answer are `peer_timing.py`'s. Needs `onnxruntime` (`bash benches/peers/setup.sh`).
"""

import sys

import peer_timing


def peer(args):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {}

    def compile_for(batch):
        # The ONNX exports have a dynamic batch: one session serves every batch.
        if "s" not in sessions:
            sessions["s"] = ort.InferenceSession(
                args.model, sess_options=opts, providers=["CPUExecutionProvider"])
        sess = sessions["s"]
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]

    return ort.__version__, {}, compile_for


if __name__ == "__main__":
    sys.exit(peer_timing.main(__doc__.splitlines()[0], peer))
