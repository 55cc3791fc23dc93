"""Settings replayed from a file are a fixed schema: the overrides ``evaluate.py`` takes back from a checkpoint and
``resume=DIR`` from ``DIR/.hydra/overrides.yaml``.

Only keys that describe the experiment come back (program, task, split, model name and arguments, data paths and
the training settings a resume continues with), each value a plain number, string, boolean or list of them, never
an interpolation. ``hydra.*``, ``paths.*``, a ``_target_`` (or any ``_name_`` key), a nested mapping and any key
outside the schema are refused with one line naming it: a file must not choose what code runs or where files are
written. A key given on the command line is not replayed, so a user can still set any of them explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cxr.errors import ConfigError

# config groups whose option a replay may choose (a plain option name, read from cxr's own configs)
GROUPS = (
    "program",
    "task",
    "split",
    "model",
    "data",
    "experiment",
    "debug",
    "trainer",
    "callbacks",
    "logger",
    "evaluation",
    "hparams_search",
)
# roots of the value keys a replay may set, and the top-level values
VALUE_ROOTS = ("program", "task", "split", "model", "data", "trainer", "callbacks", "logger", "evaluation")
TOP_LEVEL = {
    "seed": (int,),
    "data_check": (bool,),
    "check_only": (bool,),
    "run_name": (str, type(None)),
    "split_from": (str,),
    "preprocessing_from": (str,),
}
# keys whose value is itself the dotted path of what is built: only the allowlist of cxr.safe_instantiate
NAMES_CODE = ("program.training.optimizer",)
_OPTION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SCALARS = (bool, int, float, str, type(None))


class ReplayError(ConfigError):
    """A replayed setting outside the schema; the message names the file and the key."""


def _scalar(value) -> bool:
    return isinstance(value, _SCALARS) and not (isinstance(value, str) and "${" in value)


def _plain(value) -> bool:
    """A number, string, boolean, null, or a list of them; no interpolation."""
    if isinstance(value, (list, tuple)):
        return all(_scalar(v) for v in value)
    return _scalar(value)


def _shown(value) -> str:
    return (
        repr(value)
        if _plain(value) and not (isinstance(value, str) and "${" in value)
        else f"a {type(value).__name__}"
        if not isinstance(value, str)
        else "an interpolation"
    )


def check_override(override, source: str) -> None:
    """Refuse one parsed Hydra override (``OverridesParser``) unless the schema allows it."""
    key = override.key_or_group
    line = override.input_line
    where = f"{source}: {key}"
    if override.is_sweep_override():
        raise ReplayError(f"{where}: a sweep ({line!r}) is not replayed")
    try:
        value = override.value()
    except Exception:  # a grammar function that cannot be evaluated here
        raise ReplayError(f"{where}: {line!r} cannot be replayed") from None
    parts = re.split(r"[./]", key)
    if parts[0] in ("hydra", "paths"):
        raise ReplayError(
            f"{where}: {parts[0]}.* settings are never replayed from a file (they choose what runs "
            "and where files are written); give them on the command line"
        )
    if any(p.startswith("_") and p.endswith("_") for p in parts):
        raise ReplayError(
            f"{where}: a key that names code is never replayed from a file; give it on the command line if you mean it"
        )
    if "/" in key or ("." not in key and key in GROUPS):  # a config group option
        if key not in GROUPS:
            raise ReplayError(
                f"{where}: not a setting that describes the experiment (replayed: {', '.join(GROUPS)} "
                f"options, {', '.join(r + '.*' for r in VALUE_ROOTS)}, {', '.join(TOP_LEVEL)})"
            )
        if value is not None and not (isinstance(value, str) and _OPTION.match(value) and ".." not in value):
            raise ReplayError(f"{where}: {_shown(value)} is not an option name of the {key} group")
        return
    if key in TOP_LEVEL:
        if not isinstance(value, TOP_LEVEL[key]) or (isinstance(value, bool) and bool not in TOP_LEVEL[key]):
            raise ReplayError(f"{where}: {_shown(value)} where {TOP_LEVEL[key][0].__name__} is expected")
        if isinstance(value, str) and "${" in value:
            raise ReplayError(f"{where}: an interpolation is not a value")
        return
    if parts[0] not in VALUE_ROOTS:
        raise ReplayError(
            f"{where}: not a setting that describes the experiment (replayed: {', '.join(GROUPS)} "
            f"options, {', '.join(r + '.*' for r in VALUE_ROOTS)}, {', '.join(TOP_LEVEL)})"
        )
    if override.is_delete():
        return
    if not _plain(value):
        raise ReplayError(f"{where}: {_shown(value)} where a number, string, boolean or list of them is expected")
    if key in NAMES_CODE:
        from cxr.safe_instantiate import UnsafeTargetError, check_target

        try:
            check_target(value, key)
        except UnsafeTargetError as error:
            raise ReplayError(f"{source}: {error}") from None


def replayable(
    overrides: Sequence[str], source: str, given: Sequence[str] = (), dropped: Sequence[str] = ()
) -> list[str]:
    """The overrides of a file (``source`` names it in messages) that are replayed: those the command line
    (``given``) does not set itself and whose root is not in ``dropped``, each checked against the schema."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise ReplayError(f"{source}: overrides must be a list of key=value strings")
    given_keys = {_key(o) for o in given}
    kept = [o for o in overrides if _key(o) not in given_keys and re.split(r"[./]", _key(o))[0] not in dropped]
    parser = OverridesParser.create()
    for line in kept:
        try:
            parsed = parser.parse_overrides([line])
        except Exception:  # Hydra's grammar error
            why = "an interpolation is not a value" if "${" in line else f"{line!r} is not a valid override"
            raise ReplayError(f"{source}: {_key(line)}: {why}") from None
        check_override(parsed[0], source)
    return kept


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")
