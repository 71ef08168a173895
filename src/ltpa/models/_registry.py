"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``, as timm does it.

A variant is a registered builder that fixes keyword arguments of one generic class.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, cast

from ltpa.errors import LTPAError
from ltpa.models._base import LTPAModel
from ltpa.utils import did_you_mean

__all__ = ["check_model_kwargs", "create_model", "list_models", "register_family", "register_model"]

_MODELS: dict[str, Callable[..., LTPAModel]] = {}
# Families of names resolved on demand, e.g. "timm/<backbone>_att2_pc": prefix -> resolver(rest) -> builder.
_FAMILIES: dict[str, Callable[[str], Callable[..., LTPAModel]]] = {}


def register_family(prefix: str, resolver: Callable[[str], Callable[..., LTPAModel]]) -> None:
    """Registers names ``"<prefix>/<rest>"``: ``resolver(rest)`` returns the builder, or raises LTPAError."""
    _FAMILIES[prefix] = resolver


def register_model(name: str, builder: Callable[..., LTPAModel]) -> None:
    """Registers ``builder(**kwargs) -> LTPAModel`` under ``name``."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = builder


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` keeps those containing it (or matching a glob)."""
    import fnmatch

    names = sorted(_MODELS)
    if pattern:
        names = [n for n in names if pattern in n or fnmatch.fnmatch(n, pattern)]
    return names


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike[str] = False,
    checkpoint_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> LTPAModel:
    """Builds the registered model ``name`` with ``kwargs`` (``num_classes``, ``img_size``, ``width``, ...),
    as ``timm.create_model`` does.

    The returned model remembers ``model_name`` and ``model_kwargs`` so that checkpoints can rebuild it.

    Args:
        name: a registered name (``ltpa.list_models()``, ``timm/...``, ``tv/...``), or ``hf-hub:<org>/<name>``
            for the model saved in that Hub repository.
        pretrained: which weights to start from.

            * ``False``: fresh initialisation (method §3.6).
            * a folder written by ``model.save_pretrained`` / ``ltpa export RUN --format hf``, or a Hub id
              ``"hf-hub:<org>/<name>[@<revision>]"``: the whole model's weights. Its saved keyword arguments
              are the defaults of ``kwargs``; a different ``num_classes`` keeps a fresh classifier.
            * ``True``: the published weights of ``name``. The paper models have none yet: train one
              (``ltpa train --model NAME``) and pass its run folder as ``checkpoint_path``, or its
              ``ltpa export RUN --format hf`` folder as ``pretrained``. For ``timm/`` and ``tv/`` names,
              ``True`` (or a weights file path) loads the backbone's ImageNet weights from the local cache
              (:mod:`ltpa.models.attach`).
        checkpoint_path: an ``ltpa train`` run folder or checkpoint (``ltpa.checkpoint``) whose weights are
            loaded into the model after ``pretrained``. Its saved keyword arguments (``num_classes``,
            ``img_size``, ``width``, ``preprocess``...) are the defaults of ``kwargs``; a ``kwargs`` value that
            changes the architecture is refused.
        **kwargs: the model's keyword arguments.

    Raises:
        LTPAError: every misuse: an unknown name (listing the closest registered names), ``pretrained``
            that is not one of the above or names weights that are missing, unreachable or of another
            model, a ``checkpoint_path`` without a checkpoint or of another model.
    """
    if name.startswith("hf-hub:"):
        if pretrained not in (False, True) or checkpoint_path is not None:
            raise LTPAError(f"{name} names its weights itself; leave out pretrained and checkpoint_path")
        from ltpa.hub import from_pretrained

        return cast(LTPAModel, from_pretrained(name, **kwargs).train())
    files = None
    family = name.partition("/")[0] in _FAMILIES and "/" in name
    if isinstance(pretrained, bool) or pretrained is None:
        if pretrained is True and not family:
            _check_name(name)
            raise LTPAError(
                f"no published weights for {name} yet: train them (`ltpa train --model {name} ...`) and pass "
                "the run folder as checkpoint_path=, or `ltpa export RUN --format hf --out DIR` and pass "
                "pretrained=DIR (or an hf-hub:<org>/<name> id)"
            )
        if pretrained is True:
            kwargs["pretrained"] = True
    elif isinstance(pretrained, str | os.PathLike):
        from ltpa.hub import is_pretrained_source, resolve_pretrained

        if is_pretrained_source(pretrained):
            files = resolve_pretrained(pretrained)
            saved = files.config["model_name"]
            if saved != name:
                raise LTPAError(
                    f"{files.source} holds {saved}, not {name}; "
                    f"call ltpa.create_model({saved!r}, pretrained={os.fspath(pretrained)!r})"
                )
            kwargs = {**files.config.get("model_kwargs", {}), **kwargs}
        elif family:
            kwargs["pretrained"] = os.fspath(pretrained)  # a backbone weights file (models/attach.py)
        else:
            raise LTPAError(
                f"pretrained={os.fspath(pretrained)!r} is neither a pretrained folder "
                "(model.save_pretrained, `ltpa export RUN --format hf`) nor an hf-hub:<org>/<name> id"
            )
    else:
        raise LTPAError(
            "pretrained must be False, True, a pretrained folder or an hf-hub:<org>/<name> id, "
            f"got {pretrained!r}"
        )
    if checkpoint_path is not None:
        kwargs = {**_checkpoint_kwargs(name, checkpoint_path), **kwargs}
    model = _build(name, kwargs)
    if files is not None:
        from ltpa.hub import load_pretrained_weights

        load_pretrained_weights(model, files)
    if checkpoint_path is not None:
        _load_checkpoint(model, name, checkpoint_path)
    return model


def _check_name(name: str) -> None:
    if name not in _MODELS:
        hint = did_you_mean(name, _MODELS, n=5, cutoff=0.4) or "see `ltpa models` for the list"
        raise LTPAError(f"unknown model {name!r}; {hint}")


# Keyword arguments read from files (checkpoint sidecars, config.json, config.yaml) are checked against these
# before anything is built: a tampered num_classes of 1e9 or width of 1e6 would allocate terabytes.
# name -> (type, least, most); None is accepted where the builder's default is None.
_NUMBER_KWARGS: dict[str, tuple[type, float, float]] = {
    "num_classes": (int, 1, 100_000),
    "img_size": (int, 1, 4096),
    "width": (float, 1e-3, 4.0),
    "drop_scale": (float, 0.0, 10.0),
    "first_pool": (int, 1, 64),
    "init_seed": (int, 0, 2**63 - 1),
}
_TYPED_KWARGS: dict[str, tuple[type, ...]] = {
    "compatibility": (str,),
    "normalization": (str,),
    "combine": (str,),
    "indep_mode": (str,),
    "match": (str,),
    "preprocess": (str,),
    "attention_mode": (str,),
    "grad_averaging": (bool,),
    "backbone_kwargs": (dict,),
    "pretrained": (bool, str),
}


def check_model_kwargs(kwargs: Any, where: str = "") -> dict[str, Any]:
    """Refuses model keyword arguments of the wrong type or out of a sane range, before anything is built.

    Args:
        kwargs: the keyword arguments (a mapping with string keys).
        where: where they were read, for the message (e.g. ``" in run/last.json"``).

    Returns:
        ``kwargs`` as a dict.

    Raises:
        LTPAError: naming the argument, its value and the accepted range.
    """
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise LTPAError(
            f"model keyword arguments{where} must be a mapping of names to values, got {kwargs!r:.80}"
        )
    for key, value in kwargs.items():
        if key in _NUMBER_KWARGS and value is not None:
            kind, low, high = _NUMBER_KWARGS[key]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
                raise LTPAError(f"model argument {key}{where} must be a whole number, got {value!r:.80}")
            if not number or not math.isfinite(value) or not low <= value <= high:
                raise LTPAError(
                    f"model argument {key}{where} must be a number in {low:g}..{high:g}, got {value!r:.80}"
                )
        elif key in _TYPED_KWARGS and value is not None and not isinstance(value, _TYPED_KWARGS[key]):
            words = " or ".join(t.__name__ for t in _TYPED_KWARGS[key])
            raise LTPAError(f"model argument {key}{where} must be a {words}, got {value!r:.80}")
        elif key == "attention_levels" and not (
            isinstance(value, list | tuple)
            and len(value) <= 16
            and all(isinstance(v, int) and not isinstance(v, bool) and -64 <= v <= 64 for v in value)
        ):
            raise LTPAError(f"model argument attention_levels{where} must be a short list of layer numbers")
    return dict(kwargs)


def _build(name: str, kwargs: dict[str, Any]) -> LTPAModel:
    check_model_kwargs(kwargs)
    prefix, _, rest = name.partition("/")
    if rest and prefix in _FAMILIES:
        builder = _FAMILIES[prefix](rest)
    else:
        _check_name(name)
        builder = _MODELS[name]
    import inspect

    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as err:  # an argument the model does not take (e.g. from an edited sidecar)
        raise LTPAError(f"model {name} does not take these arguments: {err}") from err
    except ValueError:  # no signature to check against
        pass
    model = builder(**kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model


def _checkpoint_kwargs(name: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The keyword arguments the ltpa checkpoint at ``path`` was saved with, once its model is ``name``."""
    from ltpa.checkpoint import read_sidecar

    meta = read_sidecar(path)
    saved = meta["model_name"]
    if saved != name:
        raise LTPAError(
            f"checkpoint {os.fspath(path)} holds {saved}, not {name}; "
            f"call ltpa.create_model({saved!r}, checkpoint_path=...) or ltpa.load_model"
        )
    saved_kwargs = meta.get("model_kwargs") or {}
    if not isinstance(saved_kwargs, dict):
        raise LTPAError(f"checkpoint {os.fspath(path)} has malformed model_kwargs; restore its .json sidecar")
    # the weights come from the checkpoint: backbone ImageNet weights need not be looked for again
    return {k: v for k, v in saved_kwargs.items() if k != "pretrained"}


def _load_checkpoint(model: LTPAModel, name: str, path: str | os.PathLike[str]) -> None:
    """Loads the weights of an ltpa checkpoint (``ltpa.checkpoint.load_model``) into ``model``."""
    from ltpa.checkpoint import load_model

    _checkpoint_kwargs(name, path)
    source = load_model(path)
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise LTPAError(
            f"checkpoint {os.fspath(path)} does not fit {name} built with these arguments "
            f"({str(err).splitlines()[0]}); leave out the arguments that change the architecture"
        ) from err
    classes = source.checkpoint.get("classes")
    if classes:
        model.pretrained_cfg = {**model.__dict__.get("_pretrained_cfg", {}), "classes": list(classes)}
