"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``, as timm does it.

A variant is a registered builder that fixes keyword arguments of one generic class.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from ltpa.errors import LTPAError
from ltpa.models._base import LTPAModel

__all__ = ["create_model", "list_models", "register_family", "register_model"]

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


def create_model(name: str, **kwargs: Any) -> LTPAModel:
    """Builds the registered model ``name`` with ``kwargs`` (``num_classes``, ``img_size``, ``width``, ...).

    The returned model remembers ``model_name`` and ``model_kwargs`` so that checkpoints can rebuild it.

    Raises:
        LTPAError: for an unknown name, listing the closest registered names.
    """
    prefix, _, rest = name.partition("/")
    if rest and prefix in _FAMILIES:
        model = _FAMILIES[prefix](rest)(**kwargs)
        model.model_name = name
        model.model_kwargs = dict(kwargs)
        return model
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else "see `ltpa models` for the list"
        raise LTPAError(f"unknown model {name!r}; {hint}")
    model = _MODELS[name](**kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model
