"""The model registry, in the manner of timm (``timm/models/_registry.py``): an architecture is a
function (its *entrypoint*) registered under its own name with :func:`register_model`, built by
name with :func:`create_model`, listed by :func:`list_models` and described by :func:`model_info`.

An entrypoint takes ``num_classes`` and ``in_channels`` as keywords, plus any options it names
in its signature (``ModelConfig`` fields of the same name are passed to it by
:func:`medclass.models.build_model`), and returns a :class:`~medclass.models.base.ClassifierModel`.
Adding an architecture is one module holding a decorated entrypoint, imported by
``medclass.models`` (or by the caller before :func:`create_model`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar, Union, overload

from torch import nn

from .base import ClassifierModel

__all__ = [
    "ModelInfo", "register_model", "create_model", "list_models", "is_model", "model_info", "model_options",
    "models_table",
]

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of one architecture.

    ``name``: the entrypoint's function name; ``description``: one line (the entrypoint's
    docstring's first line when not given); ``input_sizes``: the square input sizes in pixels
    the architecture suits (``(min, max)`` range or a list, for the ``medclass models`` table;
    empty when unspecified); ``options``: the keyword options (parameters with a default) the
    entrypoint accepts besides ``num_classes`` and ``in_channels``; ``module``: where it is defined.
    """

    name: str
    entrypoint: Callable[..., nn.Module]
    description: str
    input_sizes: tuple[int, ...]
    options: tuple[str, ...]
    module: str


_registry: dict[str, ModelInfo] = {}
_BUILD_ARGS = ("num_classes", "in_channels")


def _options_of(fn: Callable[..., Any], accepts: Optional[Callable[..., Any]]) -> tuple[str, ...]:
    """The options of ``fn``: its keyword parameters that have a default (and, when it takes
    ``**kwargs``, those of ``accepts``), less ``num_classes`` and ``in_channels``."""
    names: list[str] = []
    sources = [fn]
    if accepts is not None and any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        sources.append(accepts)
    for source in sources:
        for p in inspect.signature(source).parameters.values():
            keyword = p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty
            if keyword and p.name not in _BUILD_ARGS and p.name not in names:
                names.append(p.name)
    return tuple(names)


@overload
def register_model(fn: F) -> F: ...
@overload
def register_model(
    fn: None = None, *, description: Optional[str] = None, input_sizes: Sequence[int] = (),
    accepts: Optional[Callable[..., Any]] = None,
) -> Callable[[F], F]: ...


def register_model(
    fn: Optional[F] = None,
    *,
    description: Optional[str] = None,
    input_sizes: Sequence[int] = (),
    accepts: Optional[Callable[..., Any]] = None,
) -> Union[F, Callable[[F], F]]:
    """Register an architecture's entrypoint under its function name; use bare
    (``@register_model``) or with metadata (``@register_model(description=..., input_sizes=(28, 512))``).

    Args:
        fn: the entrypoint, ``fn(*, num_classes: int, in_channels: int, **options) -> ClassifierModel``.
        description: one line for ``medclass models`` (default: the docstring's first line).
        input_sizes: square input sizes in pixels the architecture suits, e.g. ``(112, 512)``.
        accepts: when ``fn`` takes ``**kwargs``, the callable (e.g. the model class) they are
            passed to, so :func:`model_options` can list them (its keyword parameters with a
            default).

    Returns:
        ``fn`` itself (unchanged), or a decorator when called with metadata only.

    Raises:
        ValueError: another entrypoint is already registered under that name.
        TypeError: ``fn`` does not take ``num_classes`` and ``in_channels`` as keywords.
    """

    def add(f: F) -> F:
        name = f.__name__
        old = _registry.get(name)
        if old is not None and (old.module, old.entrypoint.__qualname__) != (f.__module__, f.__qualname__):
            raise ValueError(f"model {name!r} is already registered (by {old.module})")
        params = inspect.signature(f).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if not takes_kwargs and not all(a in params for a in _BUILD_ARGS):
            raise TypeError(f"model entrypoint {name!r} must take num_classes and in_channels keywords")
        doc = (description or (inspect.getdoc(f) or "").strip().splitlines() or [""])
        text = description if description is not None else doc[0]
        _registry[name] = ModelInfo(name, f, text, tuple(int(s) for s in input_sizes), _options_of(f, accepts),
                                    f.__module__)
        return f

    return add(fn) if fn is not None else add


def list_models() -> list[str]:
    """The registered architecture names, in registration order."""
    return list(_registry)


def is_model(name: str) -> bool:
    """True when ``name`` is a registered architecture."""
    return name in _registry


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown model.arch {name!r}; choose one of " + ", ".join(_registry))


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of the architecture ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if name not in _registry:
        raise _unknown(name)
    return _registry[name]


def model_options(name: str) -> tuple[str, ...]:
    """The keyword options the entrypoint of ``name`` accepts besides ``num_classes`` and
    ``in_channels`` (:attr:`ModelInfo.options`).

    Raises:
        ValueError: unknown name.
    """
    return model_info(name).options


def create_model(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> ClassifierModel:
    """Build the registered architecture ``name``: ``entrypoint(num_classes=..., in_channels=...,
    **options)``.

    Args:
        name: a name of :func:`list_models`, e.g. ``"resnet50"``.
        num_classes: outputs of the classifier (1 for a single-logit binary model).
        in_channels: image channels (1 greyscale, 3 RGB).
        options: entrypoint keywords (e.g. ``stem="small"``, ``dropout=0.2``).

    Returns:
        The model (a :class:`medclass.models.base.ClassifierModel`), float32 on the current
        default device, in training mode.

    Raises:
        ValueError: unknown name (``unknown model.arch 'x'; choose one of resnet18, ...``), or an
            option value the architecture refuses.
        TypeError: an option the entrypoint does not take, or the entrypoint returned something
            other than a ``ClassifierModel``.
    """
    model = model_info(name).entrypoint(num_classes=num_classes, in_channels=in_channels, **options)
    if not isinstance(model, ClassifierModel):
        raise TypeError(f"model entrypoint {name!r} returned a {type(model).__name__}, not a ClassifierModel "
                        "(medclass.models.base): it must expose its features, head and Grad-CAM layer")
    return model


def _sizes(sizes: tuple[int, ...]) -> str:
    if not sizes:
        return "-"
    return f"{sizes[0]}-{sizes[1]} px" if len(sizes) == 2 else ", ".join(map(str, sizes)) + " px"


def models_table(num_classes: int = 2, in_channels: int = 3) -> str:
    """The registered architectures as a text table (``medclass models``): name, parameter count
    for ``num_classes`` outputs and ``in_channels`` input channels (the model is built on the
    ``meta`` device: no memory, no weights), the input sizes it suits (pixels) and its description.

    Raises:
        ValueError, TypeError: an entrypoint fails to build with its defaults.
    """
    import torch

    rows = [("architecture", "parameters", "input size", "description")]
    for info in _registry.values():
        with torch.device("meta"):
            model = create_model(info.name, num_classes, in_channels)
        n = sum(p.numel() for p in model.parameters())
        rows.append((info.name, f"{n:,}", _sizes(info.input_sizes), info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
