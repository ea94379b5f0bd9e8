"""sparsec: compile SparseNet-style CNNs to machine code and run them.

The Python face of the Rust compiler and runtime (the native module ``sparsec._sparsec``, PyO3):
no second implementation, the same library the ``sparsec`` CLI uses.

    import numpy as np, sparsec
    blob = sparsec.compile("sparsenet-40-24.snet", weights="w.safetensors")  # or a state_dict
    model = sparsec.Model.load(blob)
    logits = model.session().run(np.zeros((1, *model.input_shape), np.float32))
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any, Mapping, Optional, Union

import numpy as np

from ._sparsec import CompileError, Model, Session
from . import _sparsec

__all__ = ["compile", "stats", "Model", "Session", "CompileError", "Compiled", "AccuracyWarning"]

log = logging.getLogger("sparsec")

ModelSource = Union[str, "os.PathLike[str]"]


class AccuracyWarning(UserWarning):
    """No kernel choice reached the accuracy budget; the most accurate one measured was kept."""


class Compiled(bytes):
    """model.bin bytes, with what the accuracy guard measured and chose (``accuracy``: the
    one-line report the CLI prints, or None when no measurement was made)."""

    accuracy: Optional[str]

    def __new__(cls, data: bytes, accuracy: Optional[str]) -> "Compiled":
        obj = super().__new__(cls, data)
        obj.accuracy = accuracy
        return obj


def _model_args(model: ModelSource, name: Optional[str]) -> tuple[str, bool, str]:
    """(text, is_path, name): a PathLike, or a str that names an existing file or ends in
    ``.snet`` and holds no newline, is a path; any other str is source text."""
    if isinstance(model, os.PathLike):
        path = os.fspath(model)
        return path, True, name or os.path.splitext(os.path.basename(path))[0]
    if not isinstance(model, str):
        raise TypeError(f"model must be a .snet path or source text, got {type(model).__name__}")
    if "\n" not in model and (model.endswith(".snet") or os.path.isfile(model)):
        return model, True, name or os.path.splitext(os.path.basename(model))[0]
    return model, False, name or "model"


def _as_f32(name: str, value: Any) -> np.ndarray:
    """A tensor (numpy array, anything with ``.numpy()`` such as a torch tensor, or anything
    with the array protocol) as a C-contiguous float32 array; floating dtypes are converted,
    others rejected."""
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        if hasattr(value, "detach"):
            value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise ValueError(f"weight `{name}` must be a floating-point tensor, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _tensors(weights: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    out = []
    for name, value in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"weight names must be str, got {type(name).__name__}")
        if name.endswith("num_batches_tracked"):
            continue  # PyTorch's BN counters: not parameters (the safetensors path skips them too)
        out.append((name, _as_f32(name, value)))
    return out


def compile(
    model: ModelSource,
    weights: Union[None, str, "os.PathLike[str]", Mapping[str, Any]] = None,
    out: Union[None, str, "os.PathLike[str]"] = None,
    target: str = "cpu",
    max_batch: int = 64,
    *,
    random_weights: Optional[int] = None,
    winograd: str = "auto",
    tolerance: Optional[float] = None,
    calibration: Optional[np.ndarray] = None,
    cuda_archs: tuple[str, ...] = ("sm_80", "sm_90"),
    ptx: bool = True,
    precision: str = "fp32",
    name: Optional[str] = None,
    verify: bool = False,
) -> Compiled:
    """Compiles a model to model.bin.

    ``model``: a ``.snet`` path or the source text. ``weights``: a ``.safetensors`` path, or a
    mapping of name to tensor (a dict of numpy arrays, a PyTorch ``state_dict``) under the
    model's parameter names (the official PyTorch names by default); or pass
    ``random_weights=SEED``. ``winograd="auto"`` measures the kernels against the reference
    under the accuracy budget (``tolerance``, ``calibration`` rows); ``"4x4"``, ``"2x2"``,
    ``"off"`` force a tile. ``precision`` (CUDA): ``"fp32"``, or ``"tf32"``/``"bf16"`` to let
    each convolution the cost model finds faster run on tensor cores. Returns the bytes (also
    written to ``out`` when given).
    Raises ``CompileError`` with the CLI's diagnostics text.
    """
    text, is_path, model_name = _model_args(model, name)
    weights_path = tensors = None
    if weights is None:
        pass
    elif isinstance(weights, (str, os.PathLike)):
        weights_path = os.fspath(weights)
    elif isinstance(weights, Mapping) or hasattr(weights, "items"):
        tensors = _tensors(weights)
    else:
        raise TypeError(
            "weights must be a .safetensors path or a mapping of name to tensor, "
            f"got {type(weights).__name__}"
        )
    if calibration is not None:
        calibration = _as_f32("calibration", calibration)
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    data, report = _sparsec.compile(
        text, is_path, model_name, weights_path, tensors, random_weights, target, max_batch,
        winograd, tolerance, calibration, list(cuda_archs), ptx, precision,
        verify,
    )
    accuracy = None
    if report is not None:
        accuracy, met = report
        log.info("%s", accuracy)
        if not met:
            warnings.warn(
                f"no kernel choice reaches the budget; kept the most accurate one measured ({accuracy})",
                AccuracyWarning,
                stacklevel=2,
            )
    compiled = Compiled(data, accuracy)
    if out is not None:
        with open(out, "wb") as f:
            f.write(compiled)
    return compiled


def stats(model: ModelSource, batch: int = 1, *, name: Optional[str] = None) -> dict:
    """The model's costs (parameters, MACs, depth, memory): the keys of ``sparsec stats --json``
    (docs/stats.md). Needs no weights."""
    text, is_path, model_name = _model_args(model, name)
    return json.loads(_sparsec.stats_json(text, is_path, model_name, batch))
