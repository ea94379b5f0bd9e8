"""The sparsec Python package against the golden vectors, with every bad input it must reject."""

import os
import re
import threading
import warnings

import numpy as np
import pytest

import sparsec
from conftest import GOLDEN, MODEL, SNET, rel_err

TOL = 2e-4


def test_golden_vectors_within_tolerance(model, golden):
    out = model.session().run(golden["input"])
    assert out.shape == golden["output"].shape
    assert out.dtype == np.float32
    assert rel_err(out, golden["output"]) < TOL


def test_model_attributes(model):
    assert model.input_shape == (3, 32, 32)
    assert model.num_classes == 100
    assert model.max_batch == 8
    assert model.target == "cpu"
    assert model.name == MODEL
    assert "sparsenet-40-24" in repr(model)


def test_compile_reports_accuracy_and_writes_out(tmp_path, blob):
    assert blob.accuracy is not None and blob.accuracy.startswith("accuracy: relative error")
    out = tmp_path / "model.bin"
    data = sparsec.compile(SNET, weights=GOLDEN / f"{MODEL}.safetensors", out=out, winograd="off")
    assert data.accuracy is None  # a forced tile is not measured
    assert out.read_bytes() == bytes(data)
    from_path = sparsec.Model.load(out)
    assert from_path.num_classes == 100
    assert sparsec.Model.load(str(out)).max_batch == 64


class FakeTensor:
    """Stands in for a torch tensor: `.detach().cpu().numpy()`."""

    def __init__(self, array):
        self.array = array

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.array


def test_state_dict_like_dict_of_arrays(weights, golden):
    # A state_dict: tensors with .numpy(), float64 arrays (converted), and PyTorch's integer
    # BN counters (skipped), compiled from source text.
    state = {}
    for i, (name, value) in enumerate(weights.items()):
        state[name] = FakeTensor(value) if i % 2 else value.astype(np.float64)
        if name.endswith("running_var"):
            state[name[: -len("running_var")] + "num_batches_tracked"] = np.array(7, np.int64)
    source = SNET.read_text()
    data = sparsec.compile(source, weights=state, winograd="off", max_batch=2)
    out = sparsec.Model.load(data).session().run(golden["input"])
    assert rel_err(out, golden["output"]) < TOL


def test_missing_unexpected_and_misshaped_weights(weights):
    source = SNET.read_text()
    missing = {k: v for k, v in weights.items() if k != "classifier.linear.bias"}
    with pytest.raises(sparsec.CompileError, match=r"missing from the weights: `classifier.linear.bias` \[100\]"):
        sparsec.compile(source, weights=missing, winograd="off")
    extra = dict(weights, **{"extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(sparsec.CompileError, match=r"does not use: `extra.weight` \[3\]"):
        sparsec.compile(source, weights=extra, winograd="off")
    shaped = dict(weights, **{"classifier.linear.bias": np.zeros(99, np.float32)})
    with pytest.raises(sparsec.CompileError, match=r"`classifier.linear.bias` has shape \[99\], but the model expects \[100\]"):
        sparsec.compile(source, weights=shaped, winograd="off")
    with pytest.raises(ValueError, match="must be a floating-point tensor, got dtype int32"):
        sparsec.compile(source, weights=dict(weights, **{"classifier.linear.bias": np.zeros(100, np.int32)}))
    with pytest.raises(TypeError, match="weights must be"):
        sparsec.compile(source, weights=42)
    with pytest.raises(ValueError, match="code generation needs weights"):
        sparsec.compile(source)


def test_source_errors_are_the_cli_text():
    bad = SNET.read_text().replace("unit = basic", "unit = basik", 1)
    assert bad != SNET.read_text(), "the model must use unit = basic for this test"
    with pytest.raises(sparsec.CompileError) as e:
        sparsec.compile(bad, random_weights=0, name="bad")
    text = str(e.value)
    assert "error[E0203]: unknown unit `basik`" in text
    assert "┌─ bad:" in text
    assert "help: did you mean `basic`?" in text
    assert re.search(r"\n\nerror: could not compile `bad` due to \d+ previous errors?$", text), text


def test_bad_compile_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.snet"):
        sparsec.compile(str(tmp_path / "nope.snet"), random_weights=0)
    with pytest.raises(ValueError, match='winograd must be "auto", "4x4", "2x2" or "off", got "5x5"'):
        sparsec.compile(SNET, random_weights=0, winograd="5x5")
    with pytest.raises(ValueError, match='target must be "cpu", "cpu-x86_64", "cpu-aarch64" or "cuda", got "tpu"'):
        sparsec.compile(SNET, random_weights=0, target="tpu")
    with pytest.raises(ValueError, match='precision must be fp32, tf32 or bf16, got "fp16"'):
        sparsec.compile(SNET, random_weights=0, target="cuda", precision="fp16")
    with pytest.raises(ValueError, match="max_batch must be a positive int, got 0"):
        sparsec.compile(SNET, random_weights=0, max_batch=0)
    with pytest.raises(TypeError, match="model must be a .snet path or source text, got int"):
        sparsec.compile(3, random_weights=0)


def test_bad_run_inputs_name_expected_and_given(model, golden):
    s = model.session(threads=1)
    x = golden["input"]
    with pytest.raises(ValueError, match="input dtype must be float32, got float64"):
        s.run(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"input shape must be \[N, 3, 32, 32\] \(NCHW\), got \[2, 3, 32, 31\]"):
        s.run(np.zeros((2, 3, 32, 31), np.float32))
    with pytest.raises(ValueError, match=r"got \[3, 32, 32\]"):
        s.run(x[0])
    with pytest.raises(ValueError, match="batch must be between 1 and the model's max_batch 8, got 9"):
        s.run(np.zeros((9, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="got 0"):
        s.run(np.zeros((0, 3, 32, 32), np.float32))
    with pytest.raises(TypeError, match="run takes a numpy.ndarray of float32, got list"):
        s.run(x.tolist())
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        model.session(threads=0)


def test_bad_model_bytes_and_paths(tmp_path, blob):
    with pytest.raises(ValueError, match="not a loadable model.bin"):
        sparsec.Model.load(b"not a model")
    broken = bytearray(blob)
    broken[len(broken) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="not a loadable model.bin"):
        sparsec.Model.load(bytes(broken))
    with pytest.raises(FileNotFoundError):
        sparsec.Model.load(tmp_path / "missing.bin")
    with pytest.raises(TypeError, match="Model.load takes a path or bytes, got int"):
        sparsec.Model.load(5)


def test_non_contiguous_input_equals_contiguous(model, golden):
    s = model.session(threads=1)
    x = golden["input"]
    expect = s.run(x)
    wide = np.zeros((2, 3, 32, 64), np.float32)
    wide[..., ::2] = x
    strided = wide[..., ::2]
    assert not strided.flags["C_CONTIGUOUS"]
    assert np.array_equal(s.run(strided), expect)
    fortran = np.asfortranarray(x)
    assert np.array_equal(s.run(fortran), expect)
    assert np.array_equal(x, golden["input"]), "run must not modify its input"


def test_thread_use_counts_every_run(model, golden):
    s = model.session(threads=2)
    assert s.thread_use() == {"all_threads": 0, "one_thread": 0}
    for _ in range(12):
        s.run(golden["input"])
    use = s.thread_use()
    assert sorted(use) == ["all_threads", "one_thread"]
    assert use["all_threads"] + use["one_thread"] == 12
    assert use["all_threads"] >= 1, "the first run is on all threads"


def test_four_threads_bit_identical_to_one(model, golden):
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 3, 3, 32, 32), dtype=np.float32) for i in range(8)]
    reference = [model.session(threads=1).run(x) for x in inputs]
    results = [[None] * len(inputs) for _ in range(4)]
    errors = []

    def work(t):
        try:
            s = model.session()
            for _ in range(3):
                for i, x in enumerate(inputs):
                    results[t][i] = s.run(x)
        except Exception as e:  # reported below: a thread's exception would vanish otherwise
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for t in range(4):
        for i in range(len(inputs)):
            assert np.array_equal(results[t][i], reference[i]), (t, i)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_ten_thousand_runs_grow_rss_by_less_than_one_mib():
    # A small model keeps 10,000 runs quick; what is measured is the binding's per-call memory.
    tiny = (
        'model "tiny"\ninput [3, 8, 8]\n'
        "stem { conv0 = conv(4, kernel = 3, pad = 1) }\n"
        "head { norm = batch_norm()\n relu()\n global_avg_pool()\n fc = linear(5) }\n"
    )
    m = sparsec.Model.load(sparsec.compile(tiny, random_weights=1, winograd="off", max_batch=4))
    s = m.session(threads=1)
    x = np.ones((2, 3, 8, 8), np.float32)
    for _ in range(200):  # warm-up: the session's memory, numpy's caches
        s.run(x)
    before = rss_bytes()
    for _ in range(10_000):
        y = s.run(x)
    grown = rss_bytes() - before
    assert y.shape == (2, 5)
    assert grown < 1 << 20, f"RSS grew by {grown} bytes over 10,000 runs"


def test_stats_has_the_cli_json_keys():
    st = sparsec.stats(SNET)
    assert st["params"] == 757252
    assert st["macs_per_image"] == 312063360
    assert st["input"] == [3, 32, 32] and st["batch"] == 1
    assert sparsec.stats(SNET, batch=4)["batch"] == 4
    with pytest.raises(sparsec.CompileError, match="unknown unit"):
        sparsec.stats(SNET.read_text().replace("unit = basic", "unit = basik", 1))


def test_no_warning_when_the_budget_is_met(blob):
    with warnings.catch_warnings():
        warnings.simplefilter("error", sparsec.AccuracyWarning)
        assert sparsec.Model.load(blob).num_classes == 100


def test_one_session_shared_by_threads_takes_turns(model, golden):
    s = model.session()
    expect = s.run(golden["input"])
    outs, errors = [], []

    def work():
        try:
            for _ in range(5):
                outs.append(s.run(golden["input"]))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(outs) == 15 and all(np.array_equal(o, expect) for o in outs)


def test_kernel_policy_options(golden):
    with pytest.raises(ValueError, match='tolerance= and calibration= apply to winograd="auto" only'):
        sparsec.compile(SNET, random_weights=0, winograd="4x4", tolerance=1e-4)
    rows = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    data = sparsec.compile(SNET, random_weights=2, tolerance=1e-3, calibration=rows, max_batch=1)
    assert data.accuracy is not None, "a guarded CPU compile reports what it measured"
    assert "on 1 calibration row (within budget 1.00e-3 = --tolerance 1.0e-3;" in data.accuracy
