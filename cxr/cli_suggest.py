"""Hydra's composition errors in a newcomer's words: an unknown key, config group or option named with the nearest
valid one ("did you mean `program`?") for the entry points of :mod:`cxr.cli`."""

from __future__ import annotations


def composition_error_line(error: BaseException, config_name: str | None, argv: list[str]) -> str | None:
    """An unknown key, config group or option in a newcomer's words: the nearest valid name by ``difflib``
    ("did you mean `program`?") instead of Hydra's "To append to your config use +progam=C", and a group's
    options without its internal configs (names starting with ``_``, such as ``_thesis``). None: not such an
    error, or the suggestion itself failed (the caller prints Hydra's message)."""
    import re

    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        if isinstance(error, MissingConfigException) and error.missing_cfg_file and "/" in error.missing_cfg_file:
            group, _, option = error.missing_cfg_file.rpartition("/")
            options = [o for o in (error.options or []) if not o.startswith("_")]
            if not options:  # not a group at all: ``progam/x=C``
                return (
                    _unknown_key_line(group.replace("/", "."), _override_line(argv, group), config_name, argv)
                    if config_name
                    else None
                )
            guess = _nearest(option, options)
            hint = f"; did you mean `{group}={guess}`?" if guess else ""
            return f"{group}={option}: {group} has no option {option!r}{hint} (options: {', '.join(options)})"
        found = re.match(r"Could not override '([^']+)'\.\s*To append", str(error))
        if isinstance(error, ConfigCompositionException) and found and config_name:
            key = found.group(1)
            return _unknown_key_line(key, _override_line(argv, key), config_name, argv)
    except Exception:  # noqa: BLE001 - a suggestion must never hide the error itself
        return None
    return None


def _override_line(argv: list[str], key: str) -> str:
    """The command-line override that sets ``key`` (or ``key`` alone when none does)."""
    return next((a for a in argv if a.partition("=")[0].lstrip("+~").split("@")[0] == key), key)


def _nearest(name: str, candidates: list[str], cutoff: float = 0.6) -> str | None:
    """The candidate closest to ``name`` (case-insensitive; difflib's ratio of at least ``cutoff``)."""
    import difflib

    by_lower = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[found[0]] if found else None


def _unknown_key_line(key: str, line: str, config_name: str, argv: list[str]) -> str:
    """``line`` sets ``key``, which the composed config lacks: name the nearest key or config group."""
    keys, groups = _known_names(config_name, [a for a in argv if a != line and not a.startswith("-")])
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    if not parent:
        siblings += [g for g in groups if "/" not in g]
    guess = _nearest(leaf, siblings)
    guess = f"{parent}.{guess}" if guess and parent else guess or _nearest(key, keys, cutoff=0.8)
    if guess:
        return f"{line}: unknown key {key!r}; did you mean `{guess}`?"
    return (
        f"{line}: unknown key {key!r} (no config key or group of that name; `--cfg job` prints the keys, "
        f"`--help` the groups; +{line.lstrip('+')} would add it as a new key)"
    )


def _known_names(config_name: str, overrides: list[str]) -> tuple[list[str], list[str]]:
    """The dotted keys of the composed config (with these overrides when they compose, else the defaults; Hydra's
    own keys under ``hydra.``) and the config groups (``hydra/launcher`` ...)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()  # the failed app's instance
    with initialize_config_module("cxr.conf", version_base="1.3"):
        loader = GlobalHydra.instance().hydra.config_loader

        def groups_under(parent: str) -> list[str]:
            names = [f"{parent}/{g}" if parent else g for g in loader.list_groups(parent)]
            return names + [sub for name in names for sub in groups_under(name)]

        groups = groups_under("")
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except Exception:  # noqa: BLE001 - another bad override, or a sweep (a,b): the defaults' keys
            cfg = compose(config_name, return_hydra_config=True)
    GlobalHydra.instance().clear()

    def walk(node, prefix: str) -> list[str]:
        if not isinstance(node, dict):
            return []
        return [k for name, value in node.items() for k in [f"{prefix}{name}", *walk(value, f"{prefix}{name}.")]]

    return walk(OmegaConf.to_container(cfg, resolve=False), ""), groups
