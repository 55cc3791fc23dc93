"""Build networks, optimisers and schedulers from configs only out of an allowlist of modules.

A checkpoint's hyper-parameters (and the training overrides ``evaluate.py`` replays) name the ``_target_`` of
what is built; left unchecked, a crafted file could name any callable (``os.system``, ...). Every ``_target_``
anywhere in such a config must resolve to a class or function defined in one of ``ALLOWED_MODULES``; anything
else is refused with :class:`UnsafeTargetError`, naming the key, before anything is imported or called.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from cxr.errors import UserError

# this package's networks (cxr.models.*), torchvision's, torch's optimisers and learning-rate schedulers
ALLOWED_MODULES = ("cxr.models", "torchvision.models", "torch.optim")  # torch.optim covers torch.optim.lr_scheduler


class UnsafeTargetError(UserError, ValueError):
    """A ``_target_`` outside the allowlist; the message names the config key."""


def _within(module: str, allowed: Sequence[str]) -> bool:
    return any(module == root or module.startswith(root + ".") for root in allowed)


def check_target(target: Any, key: str, allowed: Sequence[str] = ALLOWED_MODULES) -> None:
    """Refuse ``target`` (a dotted path) unless it names a class or function defined inside ``allowed``.

    The path must start inside the allowlist (so only allowed packages are ever imported to resolve it), and
    the object it resolves to must be defined there too: ``cxr.models.classifier.torch.load`` starts inside
    ``cxr.models`` but resolves to ``torch.load`` and is refused."""
    where = f"{key}={target!r}"
    if not isinstance(target, str) or not target:
        raise UnsafeTargetError(f"{where}: a _target_ must be a dotted path (allowed: {', '.join(ALLOWED_MODULES)})")
    if not _within(target, allowed):
        raise UnsafeTargetError(
            f"{where} is not allowed: only {', '.join(a + '.*' for a in allowed)} can be built "
            "from a config or checkpoint"
        )
    from hydra._internal.utils import _locate  # Hydra's own resolution, so we check what instantiate would call

    try:
        obj = _locate(target)
    except (ImportError, ValueError) as error:
        raise UnsafeTargetError(f"{where} cannot be found ({str(error).splitlines()[-1]})") from None
    module = getattr(inspect.unwrap(obj), "__module__", None) or ""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not _within(module, allowed):
        found = f"{module}.{obj.__qualname__}" if hasattr(obj, "__qualname__") else f"a {type(obj).__name__}"
        raise UnsafeTargetError(
            f"{where} resolves to {found}, not a class or function inside the allowlist "
            f"({', '.join(a + '.*' for a in allowed)})"
        )


def check_targets(config: Any, key: str, allowed: Sequence[str] = ALLOWED_MODULES) -> None:
    """``check_target`` for every ``_target_`` in a (nested) config; ``key`` names its root in messages."""
    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=False)
    if isinstance(config, Mapping):
        for name, value in config.items():
            if name == "_target_":
                check_target(value, f"{key}._target_", allowed)
            else:
                check_targets(value, f"{key}.{name}", allowed)
    elif isinstance(config, (list, tuple)):
        for index, value in enumerate(config):
            check_targets(value, f"{key}[{index}]", allowed)


def instantiate(config: Any, key: str, *args, **kwargs) -> Any:
    """``hydra.utils.instantiate`` after ``check_targets``: the only way cxr builds models from configs."""
    check_targets(config, key)
    check_targets(kwargs, key)
    return hydra.utils.instantiate(config, *args, **kwargs)


def check_overrides(overrides: Sequence[str], source: str, allowed: Sequence[str] = ALLOWED_MODULES) -> None:
    """``check_targets`` for Hydra command-line overrides replayed from elsewhere (a checkpoint's training
    overrides): an override of a ``_target_`` key, or whose value holds one, must stay inside the allowlist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        try:
            value = override.value()
        except Exception:  # a sweep or an odd value: not something a replayed single run holds
            raise UnsafeTargetError(f"{source} {override.input_line!r} cannot be replayed") from None
        if key.split(".")[-1].split("/")[-1] == "_target_":
            check_target(value, f"{source} {key}", allowed)
        else:
            check_targets(value, f"{source} {key}", allowed)
