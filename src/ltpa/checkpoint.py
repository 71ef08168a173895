"""Checkpoints: weights in safetensors plus a JSON sidecar, written atomically; ``load_model`` rebuilds.

A checkpoint ``<stem>`` is two files: ``<stem>.safetensors`` (the model's state dict, preprocessing state
included) and ``<stem>.json`` (model name and keyword arguments, epoch, metrics, config, ltpa version).
Loading never unpickles anything. A run folder holds ``last`` and ``best`` checkpoints.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ltpa.errors import LTPAError
from ltpa.models import LTPAModel, create_model
from ltpa.utils import atomic_write, json_safe

__all__ = [
    "atomic_write",
    "check_finite",
    "check_sidecar",
    "checkpoint_paths",
    "first_non_finite",
    "load_model",
    "read_sidecar",
    "read_weights",
    "refuse_non_finite",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_weights",
]

FORMAT_VERSION = 1


def checkpoint_paths(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)``."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding an inf or NaN, or ``None``.

    Tensors on the ``meta`` device (a model built without memory, as ``--dry-run`` does) hold no values and are
    skipped."""
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            continue
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite(state: Mapping[str, torch.Tensor], source: str | os.PathLike[str]) -> None:
    """Refuses weights read from ``source`` that hold an inf or NaN (ltpa never saves such weights, so they
    were edited or damaged): a model built from them would answer, but with nonsense.

    Raises:
        LTPAError: naming ``source`` and the first non-finite tensor.
    """
    bad = first_non_finite(state)
    if bad is not None:
        raise LTPAError(
            f"weights {os.fspath(source)} hold inf or NaN values in {bad}; the file is damaged or was edited "
            "(ltpa never saves non-finite weights): restore it or train again"
        )


def refuse_non_finite(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuses to save a model with an inf or NaN tensor (every reader would refuse it)."""
    bad = first_non_finite(state)
    if bad is not None:
        raise LTPAError(
            f"the model's {bad} holds inf or NaN values; no {what} was written (they load nowhere)"
        )


def save_weights(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, whose I/O failures (a full disk above all) become the ``OSError`` they
    are, with their errno and ``path``, instead of a ``SafetensorError`` that names neither; use it inside
    :func:`atomic_write`.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``).
    """
    try:
        save_file(dict(state), os.fspath(path), metadata=metadata)
    except SafetensorError as err:  # "Error while serializing: I/O error: No space left ... (os error 28)"
        found = re.search(r"os error (\d+)", str(err))
        code = int(found[1]) if found else errno.EIO
        raise OSError(code, os.strerror(code), os.fspath(path)) from err


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU, checked to be finite: what every reader of weights in
    ltpa (checkpoints, pretrained folders, ``--init-from``, ``--resume``, backbone files) goes through.

    Raises:
        LTPAError: a file that is missing, truncated or not safetensors, or that holds an inf or NaN.
    """
    try:
        state = load_file(os.fspath(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LTPAError(
            f"cannot read weights {os.fspath(path)}: {detail}; the file is truncated or not safetensors"
        ) from err
    check_finite(state, path)
    return state


def save_checkpoint(
    stem: str | os.PathLike[str],
    model: torch.nn.Module,
    *,
    epoch: int | None = None,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Writes the model's weights and sidecar under ``stem``; the weights first, then the sidecar, each
    atomically, so a sidecar always describes complete weights.

    Returns:
        The two paths written.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    name = getattr(model, "model_name", None)
    if name is None:
        raise LTPAError("only models made by ltpa.create_model can be checkpointed (they carry their name)")
    weights, sidecar = checkpoint_paths(stem)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    refuse_non_finite(state, "checkpoint")
    atomic_write(weights, lambda tmp: save_weights(state, tmp, metadata={"format": "ltpa", "model": name}))
    from ltpa import __version__

    meta = {
        "format_version": FORMAT_VERSION,
        "ltpa_version": __version__,
        "model_name": name,
        "model_kwargs": json_safe(getattr(model, "model_kwargs", {})),
        "num_classes": getattr(model, "num_classes", None),
        "img_size": getattr(model, "img_size", None),
        "epoch": epoch,
        "metrics": json_safe(metrics or {}),
        "config": json_safe(config or {}),
        **json_safe(extra or {}),
    }
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return weights, sidecar


def resolve_checkpoint(path: str | os.PathLike[str], which: str = "last") -> Path:
    """The checkpoint stem for a run folder (its ``which`` checkpoint), a ``.safetensors``/``.json`` file,
    or a stem.

    Raises:
        LTPAError: when nothing loadable is there.
    """
    path = Path(path)
    if path.is_dir():
        stem = path / which
    elif path.suffix in (".safetensors", ".json"):
        stem = path.with_suffix("")
    else:
        stem = path
    weights, sidecar = checkpoint_paths(stem)
    if not weights.is_file() or not sidecar.is_file():
        raise LTPAError(
            f"no checkpoint at {path}: expected a run folder with {which}.safetensors and {which}.json, "
            "or the path of a .safetensors checkpoint with its .json beside it (made by `ltpa train`)"
        )
    return stem


def read_sidecar(path: str | os.PathLike[str], which: str = "last") -> dict[str, Any]:
    """The JSON sidecar of a checkpoint (see :func:`resolve_checkpoint` for ``path``)."""
    _, sidecar = checkpoint_paths(resolve_checkpoint(path, which))
    if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
        raise LTPAError(f"{sidecar} is {sidecar.stat().st_size:,} bytes, not an ltpa checkpoint sidecar")
    try:
        meta = json.loads(sidecar.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        detail = "nested too deeply" if isinstance(err, RecursionError) else err
        raise LTPAError(f"corrupt checkpoint sidecar {sidecar}: {detail}; retrain or restore it") from err
    if not isinstance(meta, dict) or "model_name" not in meta:
        raise LTPAError(f"{sidecar} is not an ltpa checkpoint sidecar (no model_name)")
    check_sidecar(meta, str(sidecar))
    return meta


# A sidecar is a few kilobytes (the config and per-epoch metrics); anything far larger is not one.
MAX_SIDECAR_BYTES = 16 * 2**20

# sidecar field -> the types it may hold (None always allowed except for model_name and model_kwargs)
_SIDECAR_TYPES: dict[str, tuple[type, ...]] = {
    "model_name": (str,),
    "model_kwargs": (dict,),
    "num_classes": (int,),
    "img_size": (int,),
    "epoch": (int,),
    "metrics": (dict,),
    "config": (dict,),
    "classes": (list,),
}


def check_sidecar(meta: dict[str, Any], where: str) -> None:
    """Checks the fields of a checkpoint sidecar (or a pretrained folder's config.json) that ltpa reads, by
    type and range, before anything is built from them (a tampered file must not allocate terabytes or
    fail with a TypeError).

    Raises:
        LTPAError: naming the field and ``where``.
    """
    from ltpa.models import check_model_kwargs

    for key, types in _SIDECAR_TYPES.items():
        value = meta.get(key)
        required = key in ("model_name", "model_kwargs") and key in meta
        if (value is not None or required) and (not isinstance(value, types) or isinstance(value, bool)):
            words = " or ".join("mapping" if t is dict else t.__name__ for t in types)
            raise LTPAError(f"{key} in {where} must be a {words}, got {value!r:.80}; restore the file")
    check_model_kwargs(meta.get("model_kwargs") or {}, f" in {where}")
    classes = meta.get("classes")
    if classes is not None and not all(isinstance(c, str) for c in classes):
        raise LTPAError(f"classes in {where} must be a list of names; restore the file")
    for key in ("num_classes", "img_size"):
        if meta.get(key) is not None:
            check_model_kwargs({key: meta[key]}, f" in {where}")


def load_model(
    path: str | os.PathLike[str], *, which: str = "last", device: str | torch.device = "cpu"
) -> LTPAModel:
    """Rebuilds a trained model in eval mode from a run folder or a checkpoint file, without unpickling.

    Args:
        path: a run folder (its ``which`` checkpoint is used), a ``.safetensors`` or ``.json`` file, or a stem.
        which: ``"last"`` or ``"best"`` for run folders.
        device: where to put the model.

    Returns:
        The model, with ``model.checkpoint`` holding the sidecar and ``model.run_name`` the run folder's name.
    """
    stem = resolve_checkpoint(path, which)
    meta = read_sidecar(stem)
    weights, _ = checkpoint_paths(stem)
    state = read_weights(weights)
    model = create_model(meta["model_name"], **meta.get("model_kwargs", {}))
    own = model.state_dict()
    clash = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if clash:  # e.g. a sidecar edited to another num_classes or width than the weights were saved with
        k = clash[0]
        raise LTPAError(
            f"weights {weights} do not fit the model its sidecar {stem}.json describes ({meta['model_name']}, "
            f"{meta.get('model_kwargs', {})}): {k} is {tuple(state[k].shape)} in the weights but "
            f"{tuple(own[k].shape)} in the model; restore the sidecar that was saved with these weights"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LTPAError(
            f"weights {weights} do not fit model {meta['model_name']}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    model.checkpoint = meta
    model.run_name = Path(path).name if Path(path).is_dir() else stem.parent.name
    return model.to(device).eval()
