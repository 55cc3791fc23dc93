"""cxr's model registry: the networks a checkpoint may describe, by name, with typed arguments.

A checkpoint holds its network as data, ``{"name": "torchvision/densenet121", "args": {"in_channels": 1}}``: a name
from this registry and arguments of plain types (numbers, strings, booleans, lists of them) checked against the
entry's parameters. Loading builds only these entries; a file never names code (no ``_target_``) and no string
of it is interpolated (no ``${``). New networks enter here (docs/security.md). This module imports no job.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PLAIN = (bool, int, float, str, type(None))


class ModelSpecError(ValueError):
    """A network description that is not a registry name with typed arguments; the message names the key."""


@dataclass(frozen=True)
class Entry:
    """One buildable network: where its class lives (imported only when built) and the type of each argument."""

    module: str
    cls: str
    parameters: dict[str, tuple[type, ...]]  # argument -> allowed types (list[int] written as (list, int))
    fixed: tuple[str, ...] = ()  # arguments the name itself sets (torchvision/<name>: name)
    loads_weights: bool = False  # takes ``weights=`` itself (else a state dict is loaded after)

    def constructor(self):
        return getattr(importlib.import_module(self.module), self.cls)


_THESIS_CNN = Entry(
    "cxr.models.thesis_cnn",
    "ThesisCNN",
    {"in_channels": (int,), "image_size": (int,), "filters": (list, int), "hidden": (int,), "num_outputs": (int,)},
)
_TORCHVISION = Entry(
    "cxr.models.backbones",
    "TorchvisionNet",
    {"name": (str,), "num_outputs": (int,), "in_channels": (int,), "weights": (str, type(None)), "grey_input": (str,)},
    fixed=("name",),
    loads_weights=True,
)
TORCHVISION_PREFIX = "torchvision/"
# the networks of the named pretrained sources (cxr.models.sources, cxr.models.pretrained); weights= and
# weights_file= come from model.weights / model.weights_file, never from a checkpoint
_SOURCE_ARGS = {
    "num_outputs": (int,),
    "findings": (list, str),
    "weights": (str, type(None)),
    "weights_file": (str, type(None)),
}
_XRV = {
    "xrv/densenet121": Entry("cxr.models.pretrained", "XrvDenseNet", _SOURCE_ARGS, loads_weights=True),
    "xrv/resnet50": Entry("cxr.models.pretrained", "XrvResNet", _SOURCE_ARGS, loads_weights=True),
}
_TIMM = Entry("cxr.models.pretrained", "TimmNet", {"name": (str,), **_SOURCE_ARGS}, fixed=("name",), loads_weights=True)
_HF = Entry(
    "cxr.models.pretrained",
    "HFEncoderNet",
    {"model_type": (str,), "config": (str,), **_SOURCE_ARGS},
    fixed=("model_type",),
    loads_weights=True,
)
_FIXED_BY_PREFIX = {TORCHVISION_PREFIX: "name", "timm/": "name", "hf/": "model_type"}
# the classes cxr's configs and checkpoints named before the registry (read through it, nothing else is)
_OLD_TARGETS = {"cxr.models.thesis_cnn.ThesisCNN": "thesis_cnn", "cxr.models.backbones.TorchvisionNet": "torchvision"}


def names() -> list[str]:
    """The registry's names as a user writes them (``torchvision/<any torchvision classification model>``)."""
    return ["thesis_cnn", "torchvision/<name>", *_XRV, "timm/<name>", "hf/<dinov2|vit>"]


def entry(name: Any, source: str = "net") -> Entry:
    """The entry of ``name``; ModelSpecError naming ``source`` otherwise."""
    if name == "thesis_cnn":
        return _THESIS_CNN
    if isinstance(name, str) and name.startswith(TORCHVISION_PREFIX):
        from torchvision.models import list_models

        if name[len(TORCHVISION_PREFIX) :] in list_models():
            return _TORCHVISION
    if name in _XRV:
        return _XRV[name]
    if isinstance(name, str) and name.startswith("timm/"):
        try:
            import timm
        except ImportError:
            raise ModelSpecError(f"{source}.name={name!r} needs timm: pip install -e '.[pretrained]'") from None
        if name[len("timm/") :] in timm.list_models():
            return _TIMM
    if isinstance(name, str) and name.startswith("hf/"):
        from cxr.models.pretrained import HF_MODELS

        if name[len("hf/") :] in HF_MODELS:
            return _HF
    raise ModelSpecError(
        f"{source}.name={name!r} is not in cxr's model registry ({', '.join(names())}); new "
        "networks are added in cxr/models/registry.py"
    )


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, PLAIN) else f"a {type(value).__name__}"


def _check_value(value: Any, allowed: tuple[type, ...], key: str) -> None:
    if allowed[0] is list:
        if not isinstance(value, (list, tuple)):
            raise ModelSpecError(
                f"{key}: {_shown(value)} where a list of {'/'.join(t.__name__ for t in allowed[1:])} is expected"
            )
        for index, item in enumerate(value):
            _check_value(item, allowed[1:], f"{key}[{index}]")
        return
    if not _is(value, allowed):
        raise ModelSpecError(
            f"{key}: {_shown(value)} where {' or '.join(t.__name__ for t in allowed)} is expected"
            + (" (an interpolation is not a value)" if isinstance(value, str) else "")
        )


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, str) and "${" in value:
        return False  # an interpolation is never a value
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types) or (float in types and isinstance(value, int) and not isinstance(value, bool))


def check_spec(spec: Any, source: str = "net") -> dict:
    """``spec`` as ``{"name", "args"}`` after checking the name and every argument's type; ModelSpecError naming
    the key otherwise."""
    if not isinstance(spec, Mapping) or set(spec) - {"name", "args"} or "name" not in spec:
        keys = sorted(map(str, spec)) if isinstance(spec, Mapping) else type(spec).__name__
        raise ModelSpecError(
            f"{source}: a network is described as {{name, args}} from cxr's model registry, found {keys}"
        )
    found = entry(spec["name"], source)
    args = spec.get("args") or {}
    if not isinstance(args, Mapping):
        raise ModelSpecError(f"{source}.args: expected a mapping of argument names to values")
    for key, value in args.items():
        if key not in found.parameters or key in found.fixed:
            raise ModelSpecError(
                f"{source}.args.{key}: not an argument of {spec['name']} (its arguments: "
                f"{', '.join(k for k in found.parameters if k not in found.fixed)})"
            )
        _check_value(value, found.parameters[key], f"{source}.args.{key}")
    return {"name": spec["name"], "args": {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}}


def spec_from_config(net: Mapping, source: str = "model.net") -> dict:
    """A network config (the user's ``model.net`` with ``_target_``, or an old checkpoint's) as a registry spec;
    a ``_target_`` that is not one of cxr's networks is refused."""
    if "_target_" not in net:
        return check_spec(net, source)
    target = net["_target_"]
    family = _OLD_TARGETS.get(target) if isinstance(target, str) else None
    if family is None:
        raise ModelSpecError(
            f"{source}._target_={target!r} is not in cxr's model registry ({', '.join(names())}); "
            "new networks are added in cxr/models/registry.py"
        )
    args = {k: v for k, v in net.items() if k != "_target_"}
    if family == "torchvision":
        name = f"{TORCHVISION_PREFIX}{args.pop('name', 'densenet121')}"
    else:
        name = family
    return check_spec({"name": name, "args": args}, source)


def build(spec: Mapping, source: str = "net", **extra):
    """The network ``spec`` describes (``extra``: arguments set by the caller, e.g. ``num_outputs``)."""
    spec = check_spec(spec, source)
    found = entry(spec["name"], source)
    args = {**spec["args"], **extra}
    prefix = next((p for p in _FIXED_BY_PREFIX if spec["name"].startswith(p)), None)
    if found.fixed and prefix:
        args[_FIXED_BY_PREFIX[prefix]] = spec["name"][len(prefix) :]
    return found.constructor()(**args)


def signature_mismatches() -> list[str]:
    """Declared arguments that the classes do not take (a check for the tests)."""
    problems = []
    for found in (_THESIS_CNN, _TORCHVISION, *_XRV.values(), _TIMM, _HF):
        accepted = inspect.signature(found.constructor()).parameters
        problems += [f"{found.cls}.{k}" for k in found.parameters if k not in accepted]
    return problems
