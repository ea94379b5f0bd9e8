"""DenseNet-121 (torchvision's layout, ImageNet 224x224, random weights) as torch.onnx.export
writes it, built with onnx.helper because torch is not installed here: 7x7/2 stem with norm0
folded into conv0 (a Conv with bias, as the exporter folds a BN that follows a Conv), ReLU,
3x3/2 max pool; dense layers Concat(all earlier) -> BN -> ReLU -> Conv1x1 (norm2 folded: bias)
-> ReLU -> Conv3x3; transitions BN -> ReLU -> Conv1x1 -> AveragePool 2x2; norm5 -> ReLU ->
GlobalAveragePool -> Flatten -> Gemm. sparsec compiles it and runs batches 1 and 8; ONNX
Runtime runs the same file; the relative error must be below 2e-4.

usage: python scripts/onnx-densenet121-check.py SPARSEC [WORKDIR]   (needs onnx, onnxruntime, numpy)
"""
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

TOLERANCE = 2e-4
rng = np.random.default_rng(0)
nodes, inits = [], []
counter = [0]


def name(prefix):
    counter[0] += 1
    return f"/{prefix}_{counter[0]}"


def init(n, a):
    inits.append(numpy_helper.from_array(a.astype(np.float32), n))
    return n


def conv(x, cin, cout, k, stride=1, pad=0, bias=False, tag="conv"):
    w = init(f"{tag}.weight", rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)))
    ins = [x, w]
    if bias:
        ins.append(init(f"{tag}.bias", rng.standard_normal(cout) * 0.1))
    out = name("Conv")
    nodes.append(helper.make_node("Conv", ins, [out], kernel_shape=[k, k], strides=[stride] * 2,
                                  pads=[pad] * 4, dilations=[1, 1], group=1))
    return out


def bn(x, c, tag):
    ins = [x, init(f"{tag}.weight", rng.uniform(0.5, 1.5, c)), init(f"{tag}.bias", rng.standard_normal(c) * 0.1),
           init(f"{tag}.running_mean", rng.standard_normal(c) * 0.1), init(f"{tag}.running_var", rng.uniform(0.5, 1.5, c))]
    out = name("BatchNormalization")
    nodes.append(helper.make_node("BatchNormalization", ins, [out], epsilon=1e-5, momentum=0.9))
    return out


def op(kind, ins, **attrs):
    out = name(kind)
    nodes.append(helper.make_node(kind, ins, [out], **attrs))
    return out


def build(path):
    x = conv("input", 3, 64, 7, 2, 3, bias=True, tag="features.conv0")
    x = op("MaxPool", [op("Relu", [x])], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 64
    for b, layers in enumerate([6, 12, 24, 16]):
        feats = [x]
        for l in range(layers):
            t = f"features.denseblock{b + 1}.denselayer{l + 1}"
            cat = feats[0] if len(feats) == 1 else op("Concat", feats, axis=1)
            cin = c + 32 * l
            y = op("Relu", [bn(cat, cin, f"{t}.norm1")])
            y = op("Relu", [conv(y, cin, 128, 1, bias=True, tag=f"{t}.conv1")])
            feats.append(conv(y, 128, 32, 3, 1, 1, tag=f"{t}.conv2"))
        x = op("Concat", feats, axis=1)
        c += 32 * layers
        if b < 3:
            t = f"features.transition{b + 1}"
            y = op("Relu", [bn(x, c, f"{t}.norm")])
            y = conv(y, c, c // 2, 1, tag=f"{t}.conv")
            x = op("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])
            c //= 2
    y = op("GlobalAveragePool", [op("Relu", [bn(x, c, "features.norm5")])])
    y = op("Flatten", [y], axis=1)
    w = init("classifier.weight", rng.standard_normal((1000, c)) * np.sqrt(1.0 / c))
    bias = init("classifier.bias", rng.standard_normal(1000) * 0.01)
    nodes.append(helper.make_node("Gemm", [y, w, bias], ["output"], alpha=1.0, beta=1.0, transB=1))
    graph = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch-layout")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    sparsec = sys.argv[1]
    work = sys.argv[2] if len(sys.argv) > 2 else "target/densenet121"
    os.makedirs(work, exist_ok=True)
    path, binary = f"{work}/densenet-121.onnx", f"{work}/densenet-121.bin"
    build(path)
    r = subprocess.run([sparsec, path, "-o", binary], check=True, capture_output=True, text=True)
    print(r.stderr.strip())
    stats = subprocess.run([sparsec, "stats", path], check=True, capture_output=True, text=True)
    print(stats.stdout.split("\n\n")[0])
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    bad = False
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        np.save(f"{work}/x.npy", x)
        subprocess.run([sparsec, "run", binary, "--input", f"{work}/x.npy", "--output", f"{work}/y.npy"],
                       check=True, capture_output=True)
        want = s.run(None, {"input": x})[0]
        got = np.load(f"{work}/y.npy").reshape(want.shape)
        err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        print(f"densenet-121 batch {batch}: relative error {err:.2e} (sparsec vs ONNX Runtime {ort.__version__})")
        bad |= not err < TOLERANCE
    if bad:
        sys.exit(f"above {TOLERANCE}")


if __name__ == "__main__":
    main()
