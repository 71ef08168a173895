"""Export a trained "Learn To Pay Attention" model: ONNX, TorchScript or a shareable weights folder, checked
after export.

Paper: https://arxiv.org/abs/1804.02391. The exported graph takes what ``model(x)`` takes (float32 RGB images
in [0, 1], (B, 3, S, S); the normalisation is inside) and returns the logits, optionally followed by the
attention map of every attended level (method §1.4), so a deployment can show where the model looked.

Both formats are made by tracing the model in eval mode on random images (ONNX through the TorchScript-based
exporter ``torch.onnx.export(..., dynamo=False)``, which needs no ``onnxscript``). The batch dimension stays
dynamic; the image side is fixed at ``img_size``. After export the file is loaded again (ONNX Runtime for
ONNX, ``torch.jit.load`` for TorchScript) and its outputs are compared with PyTorch's on fresh random images
of a different batch size; a disagreement beyond ``atol + rtol * |PyTorch value|`` (``torch.allclose``'s
rule, so that large logits are held to a relative, not an absolute, precision) raises
:class:`ltpa.errors.LTPAError` and leaves no file behind. The model's name, kwargs, classes, input size and
output names are stored in the file (ONNX ``metadata_props``; TorchScript extra file ``ltpa.json``).

The ``hf`` format is a folder for sharing the PyTorch model (``model.safetensors``, ``config.json``, a
``README.md`` model card; :mod:`ltpa.hub`) that ``ltpa.create_model(name, pretrained=FOLDER)``,
``LTPAModel.from_pretrained`` and, once uploaded, ``pretrained="hf-hub:<org>/<name>"`` load; its check
reloads the folder and compares the logits.

ONNX export needs the ``onnx`` package and its check ``onnxruntime``: ``pip install onnx onnxruntime`` (in an
ltpa checkout: ``pip install -e '.[onnx]'``). PyTorch has deprecated TorchScript (``torch.jit``) in favour of ``torch.export``; ONNX is the format to prefer.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from ltpa.checkpoint import atomic_write
from ltpa.errors import LTPAError

__all__ = ["FORMATS", "ExportedOutputs", "check_export", "export_model", "onnx_opset_range", "output_names"]

Format = Literal["onnx", "torchscript", "hf"]
# format -> what the default output name appends to the checkpoint stem (hf: a folder)
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "hf": "-hf"}
MAX_IMG_SIZE = 4096  # the exported input side: also the side of the random images the check runs
_CHECK_BATCH = 3  # differs from the tracing batch of 2, so a batch size baked into the graph is caught


class ExportedOutputs(nn.Module):
    """What is exported: ``model(x)``'s logits, plus the attention maps as extra outputs with ``with_maps``.

    Shape:
        - x: (B, 3, S, S) in [0, 1].
        - returns logits (B, K), or ``(logits, map_1, ..., map_S)`` with map_s (B, H_s, W_s).
    """

    def __init__(self, model: nn.Module, with_maps: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_maps = with_maps

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not self.with_maps:
            return self.model(x)
        out = cast(Any, self.model).forward_attention(x)
        return (out.logits, *out.maps)


def output_names(model: nn.Module, with_maps: bool = False) -> list[str]:
    """``["logits"]``, then ``attn<i>_<level name>`` for each attended level when ``with_maps``."""
    names = ["logits"]
    if with_maps:
        for i, level in enumerate(getattr(model, "attn_info", [])):
            names.append(f"attn{i}_{re.sub(r'[^0-9A-Za-z]+', '_', str(level['name'])).strip('_')}")
    return names


def _metadata(model: nn.Module, img_size: int, names: list[str]) -> dict[str, Any]:
    from ltpa import __version__

    return {
        "ltpa_version": __version__,
        "model_name": getattr(model, "model_name", type(model).__name__),
        "model_kwargs": getattr(model, "model_kwargs", {}),
        "num_classes": getattr(model, "num_classes", None),
        "img_size": img_size,
        "input": f"images: float32 (B, 3, {img_size}, {img_size}), RGB in [0, 1]; normalisation is inside",
        "outputs": names,
        "levels": [dict(level) for level in getattr(model, "attn_info", [])],
    }


def _random_images(batch: int, img_size: int, device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, img_size, img_size, generator=gen).to(device)


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def _require(module: str, purpose: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise LTPAError(
            f"{purpose} needs the {module} package: pip install onnx onnxruntime "
            "(or, in an ltpa checkout, pip install -e '.[onnx]')"
        ) from err


def onnx_opset_range() -> tuple[int, int]:
    """The ONNX opset versions the TorchScript-based exporter supports, ``(lowest, highest)``."""
    try:
        from torch.onnx import _constants
    except ImportError:  # pragma: no cover - the private module moved
        return 7, 20
    low = int(getattr(_constants, "ONNX_MIN_OPSET", 7))
    high = int(
        getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 20))
    )
    return low, high


def _check_opset(opset: int) -> None:
    low, high = onnx_opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise LTPAError(
            f"ONNX opset {opset!r} is not supported by the exporter; use --opset {low}..{high} "
            "(17 is the default)"
        )


def _export_onnx(
    wrapper: ExportedOutputs, sample: torch.Tensor, path: str, names: list[str], opset: int
) -> None:
    try:
        torch.onnx.export(
            wrapper,
            (sample,),
            path,
            # the TorchScript-based exporter: no onnxscript needed, dynamic batch via dynamic_axes
            dynamo=False,
            input_names=["images"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["images", *names]},
            opset_version=opset,
        )
    except RuntimeError as err:  # torch.onnx.OnnxExporterError is one
        lines = str(err).strip().splitlines()
        detail = lines[0] if lines else type(err).__name__
        raise LTPAError(
            f"ONNX export at opset {opset} failed ({detail}); try another --opset (17 is the default) "
            "or --format torchscript"
        ) from err


def _write_onnx_metadata(path: str, meta: dict[str, Any]) -> None:
    onnx = _require("onnx", "ONNX export")
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {"ltpa": json.dumps(meta)})
    onnx.save(proto, path)


def _run_onnx(path: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    ort = _require("onnxruntime", "Checking an ONNX export")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in session.run(None, {"images": x.cpu().numpy()}))

    return run


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    # The tracer warns that values it turns into constants may not generalise: the check after export
    # compares outputs on other inputs, which is what those warnings ask for. TorchScript's deprecation
    # notice is in the module docstring rather than repeated on every export.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def _run_torchscript(path: str, device: torch.device) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    with _quiet_tracing():
        loaded = torch.jit.load(path, map_location=device)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return _as_tuple(loaded(x))

    return run


def check_export(
    path: str | os.PathLike[str],
    model: nn.Module,
    format: Format,
    *,
    with_maps: bool = False,
    img_size: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 1,
) -> float:
    """Compares an exported file with ``model`` on random images.

    Args:
        path: the ``.onnx`` or TorchScript file.
        model: the PyTorch model it was exported from (put in eval mode for the comparison, then restored).
        format: ``"onnx"`` or ``"torchscript"``.
        with_maps: whether the file returns the attention maps after the logits.
        img_size: image side (default ``model.img_size``).
        atol: the absolute part of the accepted difference.
        rtol: the relative part: a value may differ by ``atol + rtol * |PyTorch value|`` (``torch.allclose``).
        seed: seed of the random images.

    Returns:
        The largest absolute difference over all outputs.

    Raises:
        LTPAError: if an output differs by more than the tolerance, is not finite where PyTorch's is, or the
            output count is wrong.
    """
    _check_tolerances(atol, rtol)
    img_size = img_size or int(cast(Any, model).img_size)
    device = next(iter(model.parameters())).device
    run = _run_onnx(str(path)) if format == "onnx" else _run_torchscript(str(path), device)
    x = _random_images(_CHECK_BATCH, img_size, device, seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = _as_tuple(ExportedOutputs(model, with_maps)(x))
    finally:
        model.train(was_training)
    got = run(x)
    names = output_names(model, with_maps)
    if len(got) != len(expected):
        raise LTPAError(
            f"exported {format} model returns {len(got)} outputs, PyTorch {len(expected)}; re-export it"
        )
    worst = 0.0
    for name, ref, out in zip(names, expected, got):
        if tuple(out.shape) != tuple(ref.shape):
            raise LTPAError(
                f"exported {format} output {name} has shape {tuple(out.shape)}, PyTorch {tuple(ref.shape)}; "
                "the export is not valid for this batch size"
            )
        out = out.to(ref.device, ref.dtype)
        if ref.numel() and not torch.allclose(out, ref, rtol=rtol, atol=atol, equal_nan=True):
            excess = (out - ref).abs() - rtol * ref.abs()
            index = int(torch.nan_to_num(excess, nan=float("inf")).flatten().argmax())
            diff = float((out - ref).abs().flatten()[index])
            value = float(ref.flatten()[index])
            raise LTPAError(
                f"exported {format} output {name} differs from PyTorch by {diff:.3g} at a value of "
                f"{value:.3g} (> atol {atol:g} + rtol {rtol:g} * |value|); the model has an operation the "
                "exporter does not reproduce (or raise --atol / --rtol)"
            )
        diffs = (out - ref).abs()
        finite = diffs[torch.isfinite(diffs)]
        worst = max(worst, float(finite.max()) if finite.numel() else 0.0)
    return worst


def _check_tolerances(atol: float, rtol: float) -> None:
    for label, value in (("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise LTPAError(f"{label} must be a finite number >= 0, got {value!r}")


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    format: Format = "onnx",
    *,
    with_maps: bool = False,
    img_size: int | None = None,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    opset: int = 17,
    overwrite: bool = False,
) -> Path:
    """Exports ``model`` to ONNX or TorchScript and, with ``check``, verifies the file against PyTorch.

    The file is written atomically: if export or check fails, ``path`` is left as it was (absent, or the
    previous file). An existing file (for ``"hf"``: a ``README.md``, ``config.json`` or ``model.safetensors``
    in the folder) is replaced only when an earlier ltpa export wrote it, or with ``overwrite``.

    Args:
        model: an ltpa model (its ``forward`` takes [0, 1] images; ``forward_attention`` is used for maps).
        path: the file to write (for ``"hf"``, the folder).
        format: ``"onnx"``, ``"torchscript"`` or ``"hf"`` (a :mod:`ltpa.hub` weights folder).
        with_maps: also output every attended level's attention map after the logits.
        img_size: the exported image side (default ``model.img_size``); the batch size stays dynamic.
        check: reload the file and compare its outputs with PyTorch's on random images.
        atol: the absolute part of the difference the check accepts.
        rtol: the relative part: the check accepts ``atol + rtol * |PyTorch value|`` (``torch.allclose``).
        opset: ONNX opset version (see :func:`onnx_opset_range`).
        overwrite: replace files at ``path`` that ltpa did not write.

    Returns:
        ``path`` as a Path.

    Shape:
        - exported input ``images``: (B, 3, img_size, img_size) float32 in [0, 1].
        - outputs ``logits`` (B, K), then with ``with_maps`` one (B, H_s, W_s) map per level.

    Raises:
        LTPAError: unknown format, an unsupported opset, a negative tolerance, a model without maps for
            ``with_maps``, a missing package, an export or a check that fails.
    """
    if format not in FORMATS:
        raise LTPAError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if img_size is not None and not (
        isinstance(img_size, int) and not isinstance(img_size, bool) and 1 <= img_size <= MAX_IMG_SIZE
    ):
        raise LTPAError(
            f"--img-size must be a whole number of pixels in 1..{MAX_IMG_SIZE}, got {img_size!r}; omit it for "
            "the model's own input size"
        )
    if format == "hf":
        if with_maps:
            raise LTPAError("--with-maps is for onnx and torchscript; an hf folder holds the whole model")
        _check_tolerances(atol, rtol)
        if not overwrite:
            _refuse_foreign_hf(Path(path))
        return _export_hf(model, Path(path), check=check, img_size=img_size, atol=atol, rtol=rtol)
    if with_maps and not getattr(model, "attn_info", None):
        raise LTPAError(
            f"{getattr(model, 'model_name', type(model).__name__)} has no attention maps; drop --with-maps"
        )
    _check_tolerances(atol, rtol)
    if format == "onnx":
        _check_opset(opset)
        _require("onnx", "ONNX export")
        if check:
            _require("onnxruntime", "Checking an ONNX export")
    img_size = img_size or int(getattr(model, "img_size", 0)) or 224
    path = Path(path)
    if path.is_dir():
        raise LTPAError(f"{path} is a folder; give the file to write (or, on the command line, --out {path})")
    if path.exists() and not overwrite and not _exported_by_ltpa(path):
        raise LTPAError(
            f"{path} exists and is not an ltpa export; choose another file, or pass --overwrite to replace it"
        )
    _remove_stale_temporaries(path)
    names = output_names(model, with_maps)
    meta = _metadata(model, img_size, names)
    device = next(iter(model.parameters())).device
    sample = _random_images(2, img_size, device, seed=0)
    wrapper = ExportedOutputs(model, with_maps)
    was_training = model.training
    model.eval()

    def write(tmp: str) -> None:
        with _quiet_tracing():
            if format == "onnx":
                _export_onnx(wrapper, sample, tmp, names, opset)
            else:
                with torch.no_grad():
                    traced = torch.jit.trace(wrapper, (sample,), check_trace=False)
                torch.jit.save(traced, tmp, _extra_files={"ltpa.json": json.dumps(meta)})
        if format == "onnx":
            _write_onnx_metadata(tmp, meta)
        if check:
            check_export(tmp, model, format, with_maps=with_maps, img_size=img_size, atol=atol, rtol=rtol)

    try:
        atomic_write(path, write)
    finally:
        model.train(was_training)
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Deletes the temporary files an export of ``path`` killed midway left beside it (``.<name>.*.tmp``)."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()


def _exported_by_ltpa(path: Path) -> bool:
    """Whether the file at ``path`` is an ONNX or TorchScript export that ltpa wrote (its metadata says so)."""
    import zipfile

    if zipfile.is_zipfile(path):  # TorchScript: a zip archive with ltpa's extra file
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/extra/ltpa.json") for name in archive.namelist())
    try:
        onnx = _require("onnx", "Reading an ONNX file")
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX (or no onnx package): not known to be ltpa's, so not replaced
        return False
    return any(prop.key == "ltpa" for prop in proto.metadata_props)


def _refuse_foreign_hf(path: Path) -> None:
    """Refuses to export into a folder whose pretrained-folder files were not written by ltpa."""
    from ltpa.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, is_ltpa_config

    present = [n for n in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME) if (path / n).exists()]
    if present and not is_ltpa_config(path / CONFIG_NAME):
        raise LTPAError(
            f"{path} holds {', '.join(present)} that ltpa did not write; choose another --out, or pass "
            "--overwrite to replace them"
        )


def _export_hf(
    model: nn.Module, path: Path, *, check: bool, img_size: int | None, atol: float, rtol: float
) -> Path:
    """Writes the :mod:`ltpa.hub` folder in a temporary sibling folder, checks it, then moves its files into
    ``path``: a failed export or check leaves ``path`` as it was."""
    import shutil
    import tempfile

    from ltpa.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, from_pretrained, save_pretrained

    if path.exists() and not path.is_dir():
        raise LTPAError(f"{path} exists and is not a folder; choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        try:
            save_pretrained(model, tmp)
        except OSError as err:  # name the folder the user asked for, not the temporary one (e.g. a full disk)
            raise OSError(err.errno, err.strerror, str(path)) from err
        if check:
            _check_hf(tmp, model, img_size=img_size, atol=atol, rtol=rtol, load=from_pretrained)
        path.mkdir(exist_ok=True)
        # config.json last: it names the weights' sha256, so a kill between these moves leaves a folder that
        # loading refuses (new weights, old config) rather than one that loads silently
        for name in (CARD_NAME, WEIGHTS_NAME, CONFIG_NAME):
            os.replace(tmp / name, path / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_hf(
    folder: Path,
    model: nn.Module,
    *,
    img_size: int | None,
    atol: float,
    rtol: float,
    load: Callable[..., Any],
) -> None:
    reloaded = load(folder, device=next(iter(model.parameters())).device)
    size = img_size or int(cast(Any, model).img_size)
    x = _random_images(_CHECK_BATCH, size, next(iter(model.parameters())).device, seed=1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected, got = model(x), reloaded(x)
    finally:
        model.train(was_training)
    if not torch.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True):
        diff = float((got - expected).abs().max())
        raise LTPAError(f"the hf folder's model differs from PyTorch by {diff:.3g}; re-export it")
