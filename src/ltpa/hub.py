"""Shareable weights: ``save_pretrained`` folders, ``from_pretrained`` and the Hugging Face Hub.

Paper: "Learn To Pay Attention", https://arxiv.org/abs/1804.02391. A pretrained folder (or a Hub repository
holding the same files) is what ``ltpa export RUN --format hf`` writes and what
``ltpa.create_model(name, pretrained=FOLDER_OR_ID)`` and :func:`from_pretrained` read:

* ``model.safetensors``: the state dict (input normalisation state included); loading never unpickles;
* ``config.json``: ``model_name`` and ``model_kwargs`` (enough for :func:`ltpa.create_model` to rebuild the
  architecture), ``pretrained_cfg`` (input size, preprocessing, classes, licence) and what is known of the
  training (data, command, epoch, metrics);
* ``README.md``: a model card generated from the same facts.

Hub repositories are named ``hf-hub:<org>/<name>[@<revision>]`` (timm's convention); files come through
``huggingface_hub.hf_hub_download``, so its cache and ``HF_HUB_OFFLINE=1`` apply. Upload a folder with
``huggingface-cli upload <org>/<name> FOLDER``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from ltpa.errors import LTPAError

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "HF_PREFIX",
    "WEIGHTS_NAME",
    "PretrainedFiles",
    "from_pretrained",
    "is_ltpa_config",
    "is_pretrained_source",
    "load_pretrained_weights",
    "model_card",
    "resolve_pretrained",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
HF_PREFIX = "hf-hub:"
FORMAT_VERSION = 1


class PretrainedFiles(NamedTuple):
    """The local files of a pretrained folder or Hub repository, and its parsed ``config.json``."""

    source: str
    weights: Path
    config: dict[str, Any]


def is_pretrained_source(value: object) -> bool:
    """Whether ``value`` names whole-model weights: an ``hf-hub:`` id or an existing folder."""
    if isinstance(value, str) and value.startswith(HF_PREFIX):
        return True
    return isinstance(value, str | os.PathLike) and Path(value).is_dir()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _training_facts(model: nn.Module) -> dict[str, Any]:
    """What the checkpoint sidecar (``model.checkpoint``, set by ``ltpa.load_model``) says of the training."""
    from ltpa.config import command_line, portable_path

    meta = getattr(model, "checkpoint", None) or {}
    config = dict(meta.get("config") or {})
    for key in ("root", "init_from", "out"):  # no path of this machine in a folder meant for others
        if config.get(key):
            config[key] = portable_path(config[key])
    facts: dict[str, Any] = {}
    if config.get("data"):
        facts["data"] = config["data"]
    if config.get("model"):
        facts["command"] = command_line(config)
    if meta.get("epoch") is not None:
        facts["epoch"] = meta["epoch"]
    if meta.get("metrics"):
        facts["metrics"] = dict(meta["metrics"])
    if config:
        facts["config"] = config
    return facts


def model_card(config: dict[str, Any], params: int) -> str:
    """The ``README.md`` of a pretrained folder: YAML front matter for the Hub, then what the weights are,
    how they were trained (when known) and how to load them."""
    cfg = config["pretrained_cfg"]
    training = config.get("training", {})
    name = config["model_name"]
    licence = cfg.get("license", "unknown")
    tags = ["ltpa", "pytorch", "image-classification", "attention"]
    front = ["---", "library_name: ltpa", f"license: {licence if licence != 'unknown' else 'other'}", "tags:"]
    front += [f"- {tag}" for tag in tags]
    front.append("---")
    size = cfg["input_size"][-1]
    source = config.get("source", "PATH_OR_hf-hub:ORG/NAME")
    lines = [
        *front,
        "",
        f"# {name}",
        "",
        'A "Learn To Pay Attention" model (https://arxiv.org/abs/1804.02391) made with '
        f"`ltpa` {config['ltpa_version']}.",
        "",
        f"* Architecture: `{name}`, keyword arguments `{json.dumps(config['model_kwargs'])}`",
        f"* Parameters: {params:,}",
        f"* Input: RGB images in [0, 1], (B, 3, {size}, {size}); the normalisation "
        f"(`{cfg['preprocess']}`) is inside the model",
        f"* Classes: {cfg['num_classes']}"
        + (
            f" ({', '.join(map(str, cfg['classes'][:20]))}{', ...' if len(cfg['classes']) > 20 else ''})"
            if cfg.get("classes")
            else ""
        ),
        f"* Weights licence: {licence}; code licence: {cfg.get('code_license', 'MIT')}",
        "",
        "## Training",
        "",
    ]
    if training:
        lines += [f"* Data: {training.get('data', 'unknown')}"]
        if training.get("command"):
            lines += [f"* Command: `{training['command']}` (full configuration in `config.json`)"]
        if training.get("epoch") is not None:
            lines += [f"* Epoch: {training['epoch']}"]
        for key, value in (training.get("metrics") or {}).items():
            lines += [f"* {key}: {value}"]
    else:
        lines += ["Unknown: these weights were not saved from an `ltpa train` run folder."]
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "import ltpa",
        f'model = ltpa.create_model("{name}", pretrained="{source}")',
        "logits = model(images)  # images in [0, 1]",
        "out = model.forward_attention(images)  # out.logits, out.maps, out.descriptors",
        "```",
        "",
        "or `ltpa.LTPAModel.from_pretrained(PATH_OR_ID)` (eval mode).",
        "",
    ]
    return "\n".join(lines)


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    classes: list[str] | None = None,
    license: str | None = None,
    training: dict[str, Any] | None = None,
    source: str | None = None,
) -> Path:
    """Writes ``model.safetensors``, ``config.json`` and ``README.md`` (a model card) to ``directory``.

    Each file is written atomically. What is known of the training comes from ``model.checkpoint`` (the
    sidecar of a model loaded by :func:`ltpa.load_model`) and is updated by ``training``.

    Args:
        model: a model made by :func:`ltpa.create_model` (it carries its name and keyword arguments).
        directory: the folder to write (created if needed; these three files are replaced).
        classes: class names, default those of the checkpoint or ``model.pretrained_cfg``.
        license: the weights' licence (default ``model.pretrained_cfg["license"]``, ``"unknown"``).
        training: facts for the card: ``data``, ``command``, ``epoch``, ``metrics``.
        source: the id the card's loading example shows (e.g. ``"hf-hub:org/name"``).

    Returns:
        ``directory`` as a Path.

    Raises:
        LTPAError: for a model not made by ``create_model``.
    """
    from ltpa import __version__
    from ltpa.checkpoint import atomic_write, refuse_non_finite, save_weights

    model = getattr(model, "module", model)  # unwrap DDP
    name = getattr(model, "model_name", None)
    if name is None:
        raise LTPAError("only models made by ltpa.create_model can be saved (they carry their name)")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise LTPAError(f"{directory} exists and is not a folder; choose another output folder")
    cfg = dict(cast(Any, model).pretrained_cfg)
    sidecar = getattr(model, "checkpoint", None) or {}
    chosen = classes if classes is not None else sidecar.get("classes") or cfg.get("classes")
    cfg["classes"] = list(chosen) if chosen and len(chosen) == cfg["num_classes"] else None
    if license is not None:
        cfg["license"] = license
    facts = {**_training_facts(model), **(training or {})}
    config: dict[str, Any] = {
        "format": "ltpa",
        "format_version": FORMAT_VERSION,
        "ltpa_version": __version__,
        "model_name": name,
        "model_kwargs": dict(getattr(model, "model_kwargs", {})),
        "num_classes": cfg["num_classes"],
        "img_size": cfg["input_size"][-1],
        "pretrained_cfg": cfg,
        "training": facts,
    }
    if source:
        config["source"] = source
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    refuse_non_finite(state, "pretrained folder")
    params = sum(p.numel() for p in model.parameters())
    digest: list[str] = []

    def write_weights(tmp: str) -> None:
        save_weights(state, tmp, metadata={"format": "pt", "model": name})
        digest.append(_sha256(Path(tmp)))

    atomic_write(directory / WEIGHTS_NAME, write_weights)
    # the config names the weights it was written with: a folder left half-replaced (a kill between these
    # writes, or files copied from two exports) is refused on loading instead of loading silently
    config["weights_sha256"] = digest[0]
    text = json.dumps(config, indent=2, default=_json_default) + "\n"
    config = json.loads(text)  # the card shows what the file holds (tuples as lists)
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    atomic_write(directory / CARD_NAME, lambda tmp: Path(tmp).write_text(model_card(config, params)))
    return directory


def _sha256(path: Path) -> str:
    import hashlib

    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def is_ltpa_config(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the ``config.json`` of a pretrained folder written by ltpa (``save_pretrained``,
    ``ltpa export --format hf``), so that ltpa may replace it."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and config.get("format") == "ltpa" and "model_name" in config


def _split_hub_id(source: str) -> tuple[str, str | None]:
    repo = source[len(HF_PREFIX) :] if source.startswith(HF_PREFIX) else source
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise LTPAError(f"{source!r} is not a Hub id; write hf-hub:<org>/<name>[@<revision>]")
    return repo, revision or None


def _read_config(path: Path, source: str) -> dict[str, Any]:
    from ltpa.checkpoint import MAX_SIDECAR_BYTES, check_sidecar

    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise LTPAError(f"{CONFIG_NAME} of {source} is {path.stat().st_size:,} bytes, not an ltpa config")
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        detail = "nested too deeply" if isinstance(err, RecursionError) else err
        raise LTPAError(f"cannot read {CONFIG_NAME} of {source}: {detail}") from err
    if not isinstance(config, dict) or "model_name" not in config:
        raise LTPAError(
            f"{CONFIG_NAME} of {source} is not an ltpa config (no model_name); it is written by "
            "model.save_pretrained or `ltpa export RUN --format hf`"
        )
    check_sidecar(config, f"{CONFIG_NAME} of {source}")
    pretrained_cfg = config.get("pretrained_cfg")
    if pretrained_cfg is not None and not isinstance(pretrained_cfg, dict):
        raise LTPAError(f"pretrained_cfg in {CONFIG_NAME} of {source} must be a mapping; restore the file")
    return config


def resolve_pretrained(
    source: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> PretrainedFiles:
    """The local weights file and the config of a pretrained folder or Hub repository.

    Args:
        source: a folder written by :func:`save_pretrained`, or a Hub id ``hf-hub:<org>/<name>[@<revision>]``
            (the ``hf-hub:`` prefix may be left out when no folder of that name exists).
        cache_dir: the Hugging Face cache to use (default: huggingface_hub's).

    Raises:
        LTPAError: a missing folder or file, an unreadable config, a Hub repository that cannot be reached
            (offline, private, misspelt) or lacks the files.
    """
    text = os.fspath(source)
    local = Path(text)
    if not text.startswith(HF_PREFIX) and local.is_dir():
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (local / n).is_file()]
        if missing:
            raise LTPAError(
                f"{local} is not a pretrained folder: {' and '.join(missing)} missing (write one with "
                "model.save_pretrained(DIR) or `ltpa export RUN --format hf --out DIR`)"
            )
        return PretrainedFiles(text, local / WEIGHTS_NAME, _read_config(local / CONFIG_NAME, text))
    if not text.startswith(HF_PREFIX) and (local.exists() or text.count("/") != 1):
        raise LTPAError(
            f"no pretrained folder {text}: expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME} (from "
            "model.save_pretrained) or a Hub id hf-hub:<org>/<name>"
        )
    repo, revision = _split_hub_id(text)
    from huggingface_hub import hf_hub_download

    files: dict[str, Path] = {}
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            files[filename] = Path(
                hf_hub_download(
                    repo,
                    filename,
                    revision=revision,
                    cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                    library_name="ltpa",
                )
            )
        except Exception as err:  # huggingface_hub raises many types (offline, 401, 404, network)
            first_line = str(err).splitlines()[0] if str(err) else ""
            raise LTPAError(
                f"cannot get {filename} of Hub repository {repo}"
                f"{f'@{revision}' if revision else ''}: {type(err).__name__}: {first_line} "
                "(check the id, your network and HF_HUB_OFFLINE; offline, only files in the cache are found)"
            ) from err
    return PretrainedFiles(f"{HF_PREFIX}{repo}", files[WEIGHTS_NAME], _read_config(files[CONFIG_NAME], text))


def _classifier_keys(model: nn.Module) -> list[str]:
    classifier = model.get_classifier()  # type: ignore[operator]
    prefix = next(name for name, mod in model.named_modules() if mod is classifier)
    return [k for k in model.state_dict() if k.startswith(prefix + ".")]


def load_pretrained_weights(model: nn.Module, files: PretrainedFiles) -> None:
    """Loads the weights of ``files`` into ``model`` (built from the same name).

    When ``model.num_classes`` differs from the saved one, the classifier keeps its fresh initialisation (as
    timm does with ``pretrained=True, num_classes=...``) and everything else is loaded.

    Raises:
        LTPAError: unreadable weights, or weights that do not fit the model.
    """
    from ltpa.checkpoint import read_weights

    expected = files.config.get("weights_sha256")
    if expected is not None and _sha256(files.weights) != expected:
        raise LTPAError(
            f"the weights of {files.source} are not the ones its {CONFIG_NAME} was written with (sha256 "
            "differs): the folder mixes two exports, e.g. an export that was interrupted; export it again"
        )
    state = read_weights(files.weights)
    classifier = _classifier_keys(model)
    # the weights' own number of classes: the rows of the final linear layer(s)
    rows = {
        int(state[k].shape[0])
        for k in classifier
        if k in state and k.endswith("weight") and state[k].ndim == 2
    }
    saved = {
        f"{key} {value!r}"
        for key, value in (
            ("num_classes", files.config.get("num_classes")),
            ("model_kwargs.num_classes", (files.config.get("model_kwargs") or {}).get("num_classes")),
        )
        if value is not None and {value} != rows
    }
    if len(rows) == 1 and saved:
        raise LTPAError(
            f"{CONFIG_NAME} of {files.source} says {' and '.join(sorted(saved))} but its weights have "
            f"{rows.pop()} classes: the config was edited or belongs to other weights; restore it or export "
            "the model again"
        )
    reset = len(rows) == 1 and rows != {getattr(model, "num_classes", None)}  # the caller asked for another K
    fresh = set(classifier) if reset else set()
    misfit = (
        f"weights of {files.source} do not fit model {files.config['model_name']} built with these arguments"
    )
    hint = "leave out the arguments that change the architecture"
    try:
        missing, unexpected = model.load_state_dict(
            {k: v for k, v in state.items() if k not in fresh}, strict=False
        )
    except RuntimeError as err:  # shapes that differ
        detail = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise LTPAError(f"{misfit} ({detail[1] if len(detail) > 1 else detail[0]}); {hint}") from err
    missing = [k for k in missing if k not in fresh]
    if missing or unexpected:
        raise LTPAError(
            f"{misfit}: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}; {hint}"
        )
    cfg = dict(files.config.get("pretrained_cfg") or {})
    cfg = {k: v for k, v in cfg.items() if k in ("classes", "license", "code_license")}
    if not files.source.startswith(HF_PREFIX):
        cfg["file"] = str(files.weights)
    else:
        cfg["hf_hub_id"] = files.source[len(HF_PREFIX) :]
    if reset:
        cfg["classes"] = None
    model.pretrained_cfg = cfg  # type: ignore[assignment]


def from_pretrained(
    source: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> Any:
    """The model saved in a pretrained folder or Hub repository, in eval mode (as Hugging Face loaders do).

    Args:
        source: a folder written by :func:`save_pretrained` / ``ltpa export --format hf``, or a Hub id
            ``hf-hub:<org>/<name>[@<revision>]``.
        cache_dir: the Hugging Face cache (default: huggingface_hub's).
        device: where to put the model.
        **kwargs: override the saved keyword arguments of :func:`ltpa.create_model` (e.g. ``num_classes``:
            the classifier is then freshly initialised).

    Returns:
        An :class:`ltpa.LTPAModel` in eval mode.

    Raises:
        LTPAError: see :func:`resolve_pretrained` and :func:`load_pretrained_weights`.
    """
    from ltpa.models import create_model

    files = resolve_pretrained(source, cache_dir=cache_dir)
    model = create_model(files.config["model_name"], **{**files.config.get("model_kwargs", {}), **kwargs})
    load_pretrained_weights(model, files)
    return model.to(device).eval()
