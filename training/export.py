"""Export a trained model's graphs to ONNX and prove each export right.

Every export is followed by checks that fail loudly:
- the ONNX checker;
- every axis declared dynamic is symbolic in the file (torch's dynamo exporter can silently fix a dynamic
  LSTM sequence length; see PITFALLS.md), and the file is self-contained (no external data);
- ONNX Runtime's output matches PyTorch within `PARITY_TOL` max abs at batch 1, an odd batch and, where
  the graph has other dynamic axes, other sizes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

log = logging.getLogger("training.export")

PARITY_TOL = 1e-4
OPSET = 20


class ExportError(RuntimeError):
    """An exported graph failed a check; the message says which graph and why."""


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the model card describes it. Shape entries are ints or symbolic axis names."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    value_range: tuple[float | None, float | None] | None = None  # None on a side: unbounded
    layout: str = ""
    description: str = ""

    def to_card(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "range": list(self.value_range) if self.value_range else None,
            "layout": self.layout,
            "description": self.description,
        }


@dataclass
class GraphSpec:
    """One graph to export: the module, its tensors and the inputs its parity is checked on."""

    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity_inputs: list[tuple[np.ndarray, ...]]
    # The TorchScript exporter for LSTMs: dynamo can fix their sequence length silently.
    dynamo: bool = True
    # Outputs in the data's own units (a table whose values run into the thousands): the parity tolerance is
    # PARITY_TOL x max(1, max |output|), as float32 rounding grows with the values' magnitude.
    relative_parity: bool = False
    description: str = ""
    file: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.file = f"{self.name}.onnx"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _forward_arg_names(module: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(module.forward).parameters if p != "self"]


def _export_bytes(graph: GraphSpec) -> bytes:
    module = graph.module.eval()
    example = tuple(torch.from_numpy(a) for a in graph.parity_inputs[0])
    input_names = [t.name for t in graph.inputs]
    output_names = [t.name for t in graph.outputs]
    buf = io.BytesIO()
    # The exporter logs warnings about optional torchvision ops we never use.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if graph.dynamo:
            dims: dict[str, torch.export.Dim] = {}
            dynamic_shapes = {}
            for arg, spec in zip(_forward_arg_names(module), graph.inputs, strict=True):
                axes = {}
                for axis, size in enumerate(spec.shape):
                    if isinstance(size, str):
                        axes[axis] = dims.setdefault(size, torch.export.Dim(size, min=1, max=1 << 20))
                dynamic_shapes[arg] = axes
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                external_data=False,
                opset_version=OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
            if program is None:
                raise ExportError(f"{graph.name}: the exporter returned nothing")
            return program.model_proto.SerializeToString()
        dynamic_axes = {
            spec.name: {axis: size for axis, size in enumerate(spec.shape) if isinstance(size, str)}
            for spec in [*graph.inputs, *graph.outputs]
        }
        torch.onnx.export(
            module,
            example,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return buf.getvalue()


def _check_signature(graph: GraphSpec, model: onnx.ModelProto) -> None:
    """The file's inputs/outputs are the card's, with every symbolic axis still symbolic."""
    for kind, declared, actual in (
        ("input", graph.inputs, model.graph.input),
        ("output", graph.outputs, model.graph.output),
    ):
        names = [v.name for v in actual]
        if names != [t.name for t in declared]:
            raise ExportError(f"{graph.name}: {kind} names {names} != declared {[t.name for t in declared]}")
        for spec, value in zip(declared, actual, strict=True):
            dims = value.type.tensor_type.shape.dim
            if len(dims) != len(spec.shape):
                raise ExportError(f"{graph.name}: {kind} {spec.name} has rank {len(dims)}, declared {spec.shape}")
            for axis, (want, dim) in enumerate(zip(spec.shape, dims, strict=True)):
                if isinstance(want, str) and not dim.dim_param:
                    raise ExportError(
                        f"{graph.name}: {kind} {spec.name} axis {axis} should be dynamic ({want}) but the "
                        f"exporter fixed it to {dim.dim_value}"
                    )
                if isinstance(want, int) and dim.dim_value != want:
                    raise ExportError(
                        f"{graph.name}: {kind} {spec.name} axis {axis} is {dim.dim_value or dim.dim_param}, "
                        f"declared {want}"
                    )
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"{graph.name}: initializer {init.name} uses external data")


def _parity(graph: GraphSpec, data: bytes) -> float:
    """Max abs difference between ONNX Runtime and PyTorch over every parity input."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for arrays in graph.parity_inputs:
        with torch.no_grad():
            expected = graph.module(*(torch.from_numpy(a) for a in arrays))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {t.name: a for t, a in zip(graph.inputs, arrays, strict=True)})
        for spec, e, g in zip(graph.outputs, expected, got, strict=True):
            e = e.numpy()
            if e.shape != g.shape:
                raise ExportError(
                    f"{graph.name}: output {spec.name} shape {g.shape} from ONNX Runtime != PyTorch {e.shape} "
                    f"for inputs {[a.shape for a in arrays]}"
                )
            diff = float(np.max(np.abs(e - g))) if e.size else 0.0
            tolerance = PARITY_TOL
            if graph.relative_parity and e.size:
                tolerance *= max(1.0, float(np.max(np.abs(e))))
            if not diff <= tolerance:
                raise ExportError(
                    f"{graph.name}: ONNX Runtime differs from PyTorch by {diff:.3g} > {tolerance:.3g} "
                    f"on output {spec.name} for inputs {[a.shape for a in arrays]}"
                )
            worst = max(worst, diff)
    return worst


def export_graph(graph: GraphSpec, out_dir: Path) -> dict:
    """Export, check and write one graph; returns its card entry."""
    data = _export_bytes(graph)
    model = onnx.load_from_string(data)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{graph.name}: ONNX checker: {exc}") from exc
    _check_signature(graph, model)
    worst = _parity(graph, data)
    path = out_dir / graph.file
    path.write_bytes(data)
    log.info("exported %s (%d bytes), parity max abs %.2e", path, len(data), worst)
    return {
        "file": graph.file,
        "sha256": sha256_file(path),
        "bytes": len(data),
        "description": graph.description,
        "inputs": [t.to_card() for t in graph.inputs],
        "outputs": [t.to_card() for t in graph.outputs],
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "exporter": "torch.onnx dynamo" if graph.dynamo else "torch.onnx torchscript (dynamo=False)",
        "parity": {
            "max_abs": worst,
            "tolerance": PARITY_TOL,
            **({"tolerance_rule": "PARITY_TOL x max(1, max |output|)"} if graph.relative_parity else {}),
            "checked_input_shapes": [[list(a.shape) for a in arrays] for arrays in graph.parity_inputs],
        },
    }
