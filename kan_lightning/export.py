"""Export an inference network (raw inputs to raw outputs) to TorchScript or ONNX.

The layers' fast spline kernel is a custom autograd Function, which neither tracer can record;
when it is in the way the network is exported with its layers switched to ``basis="reference"``
(the full Cox-de Boor recursion: the same function, in plain PyTorch operations).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from kan_lightning.data.arrays import as_2d
from kan_lightning.nn import KANLayer


def traceable(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose KAN layers evaluate their bases by the reference recursion
    (comparisons and arithmetic only: ONNX has no ``searchsorted``)."""
    module = copy.deepcopy(module)
    for layer in module.modules():
        if isinstance(layer, KANLayer):
            layer.basis = "reference"
    return module


def _prepared(module: nn.Module, example: Tensor | None, input_dim: int) -> tuple[nn.Module, Tensor]:
    module = copy.deepcopy(module).eval()
    param = next(module.parameters())
    if example is None:
        example = torch.rand(8, input_dim, dtype=param.dtype, device=param.device) * 2 - 1
    return module, as_2d(example, "example").to(device=param.device, dtype=param.dtype)


def export_torchscript(module: nn.Module, path: str | Path, input_dim: int, example: Tensor | None = None, atol: float = 1e-6) -> Path:
    """Trace ``module`` to TorchScript at ``path``, then load it back and check it against the
    eager module on ``example`` and on a batch of another size; raises ``RuntimeError`` on a
    mismatch."""
    module, example = _prepared(module, example, input_dim)
    other = torch.cat([example, example[:1] * 0.5])  # another batch size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for candidate in (module, traceable(module)):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                traced = torch.jit.trace(candidate, (example,), check_inputs=[(other,)])
            torch.jit.save(traced, str(path))
            break
        except RuntimeError as err:  # e.g. "Could not export Python function call"
            errors.append(err)
    else:
        raise RuntimeError(f"cannot trace the model to TorchScript: {errors[-1]}") from errors[-1]
    loaded = torch.jit.load(str(path), map_location=example.device)
    with torch.no_grad():
        for inputs in (example, other):
            err = float((loaded(inputs) - module(inputs)).abs().max())
            if not err <= atol:
                raise RuntimeError(f"TorchScript export differs from the eager model by {err:g} (> {atol:g})")
    return path


def export_onnx(
    module: nn.Module, path: str | Path, input_dim: int, example: Tensor | None = None, opset_version: int = 17, atol: float = 1e-6
) -> Path:
    """Export ``module`` to ONNX at ``path`` (needs the ``onnx`` package), batch size dynamic;
    where ``onnxruntime`` is installed (the ``export`` extra), the file is run on ``example``
    and on a batch of another size and checked against the eager module (``RuntimeError``
    beyond ``atol`` times the outputs' largest magnitude, when that is above 1)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError(
            "export_onnx needs the 'onnx' package (pip install onnx); TorchScript export "
            "(export_torchscript) works without it"
        ) from None
    module, example = _prepared(module, example, input_dim)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            traceable(module),
            (example,),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=opset_version,
            dynamo=False,
        )
    try:
        import onnxruntime
    except ImportError:
        return path
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for inputs in (example, torch.cat([example, example[:1] * 0.5])):
            got, eager = torch.from_numpy(session.run(None, {"x": inputs.cpu().numpy()})[0]), module(inputs).cpu()
            err = float((got - eager).abs().max())
            if not err <= atol * max(1.0, float(eager.abs().max())):
                raise RuntimeError(f"ONNX export differs from the eager model by {err:g} (> {atol:g})")
    return path
