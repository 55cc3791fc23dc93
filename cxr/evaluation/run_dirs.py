"""The run directories ``compare.py`` reads: every finished run (metrics.json + config.yaml) at or below the given
paths, and the directories an entry point wrote that hold no finished run, with the reason."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from cxr.errors import UserError


class ReportError(UserError, ValueError):
    """A path does not exist or holds no run, or the output directory already holds a report."""


def get_dotted(tree: dict, dotted: str, default=None):
    return reduce(
        lambda node, key: node.get(key, default) if isinstance(node, dict) else default, dotted.split("."), tree
    )


@dataclass
class Run:
    path: Path
    name: str
    config: dict
    metrics: dict
    kind: str  # "train", or "evaluate" for a directory of evaluate.py (its metrics.json has "preprocessing")
    program: str | None
    seed: int | None  # None for an evaluation
    _predictions: dict = field(default_factory=dict, repr=False)

    def predictions(self, name: str) -> pd.DataFrame | None:
        if name not in self._predictions:
            file = self.path / f"predictions_{name}.csv"
            self._predictions[name] = pd.read_csv(file, dtype={"image": str}) if file.is_file() else None
        return self._predictions[name]


def _is_run(directory: Path) -> bool:
    return (directory / "metrics.json").is_file() and (directory / "config.yaml").is_file()


def skip_reason(directory: Path) -> str:
    """Why a directory written by an entry point (run.json or .hydra/) is not a finished run compare.py can read."""
    status = {}
    try:
        status = json.loads((directory / "run.json").read_text()) if (directory / "run.json").is_file() else {}
    except (OSError, ValueError):
        return "unreadable run.json"
    if status.get("status") == "failed":
        return f"failed: {(status.get('failure') or {}).get('reason') or 'no reason recorded'}"
    try:
        task = OmegaConf.load(directory / ".hydra" / "config.yaml").get("task_name")
    except Exception:  # noqa: BLE001 - no Hydra config (or a foreign one): judged by its files below
        task = None
    if task and task not in ("train", "evaluate"):
        return f"a {task} run, not a training or evaluation run"
    if (directory / "metrics.json").is_file():
        return "metrics.json without config.yaml"
    check = (directory / "data_check.txt").read_text().splitlines() if (directory / "data_check.txt").is_file() else []
    if check and check[-1].startswith("FAILED"):  # a run from before runs were marked failed
        first = next((line for line in check if line.startswith("ERROR")), check[-1])
        return f"failed its data check (data_check.txt): {first.removeprefix('ERROR').strip()}"
    if any((directory / "checkpoints").glob("*.ckpt")):
        return f"unfinished: no metrics.json (killed or still running?); resume: python train.py resume={directory}"
    return "no metrics.json (stopped before its results: killed, still running, or failed before run.json recorded why)"


def find_skipped(given: Path, found: list[Path]) -> dict[Path, str]:
    """Directories at or below ``given`` that an entry point wrote (run.json or .hydra/) but that hold no finished
    run, with the reason (a failed run's own, from its run.json)."""
    candidates = {given} if given.is_dir() else set()
    candidates |= {m.parent for m in given.rglob("run.json")} | {h.parent for h in given.rglob(".hydra") if h.is_dir()}
    written = [d for d in candidates if (d / "run.json").is_file() or (d / ".hydra").is_dir()]
    written = [d for d in written if not (d / "cv_summary.json").is_file()]  # a cross-validation: its folds are runs
    return {d.resolve(): skip_reason(d) for d in sorted(written) if not _is_run(d) and d.resolve() not in found}


def find_runs(paths, skipped: dict[Path, str] | None = None) -> list[Run]:
    """Every run directory at or below ``paths``, in path order; ReportError for a missing path or one without
    a finished run. ``skipped`` receives the directories that are not finished runs, and why."""
    found: list[Path] = []
    skipped = {} if skipped is None else skipped
    for given in map(Path, paths):
        if not given.exists():
            raise ReportError(f"{given}: no such file or directory")
        dirs = (
            [given] if _is_run(given) else sorted({m.parent for m in given.rglob("metrics.json") if _is_run(m.parent)})
        )
        found += [d.resolve() for d in dirs if d.resolve() not in found]
        passed = find_skipped(given, found)
        skipped.update(passed)
        if not dirs:
            why = "; ".join(f"{d.name}: {reason}" for d, reason in list(passed.items())[:3])
            raise ReportError(
                f"{given}: holds no finished run (no directory with both metrics.json and config.yaml)"
                + (f"; skipped {len(passed)}: {why}" if passed else "")
            )
    loaded = []
    for directory in found:
        try:
            metrics = json.loads((directory / "metrics.json").read_text())
            config = OmegaConf.to_container(OmegaConf.load(directory / "config.yaml"), resolve=False) or {}
        except Exception as error:  # a half-copied or foreign file: say which
            raise ReportError(f"{directory}: unreadable metrics.json or config.yaml ({error})") from error
        loaded.append((directory, metrics, config))
    # the run's own name (metrics.json run_name); older runs: the directory (a multirun's parent/num)
    names = [
        str(m.get("run_name") or (f"{d.parent.name}/{d.name}" if d.name.isdigit() else d.name)) for d, m, _ in loaded
    ]
    names = [n if names.count(n) == 1 else f"{n}~{i + 1}" for i, n in enumerate(names)]
    runs = []
    for (directory, metrics, config), name in zip(loaded, names):
        kind = "evaluate" if "preprocessing" in metrics or config.get("task_name") == "evaluate" else "train"
        runs.append(
            Run(
                directory,
                name,
                config,
                metrics,
                kind,
                metrics.get("program") or get_dotted(config, "program.name"),
                config.get("seed") if kind == "train" else None,
            )
        )
    return runs
