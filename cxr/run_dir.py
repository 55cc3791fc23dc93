"""A run directory and its provenance: prepared once (a finished run is never overwritten), run.json and the
resolved config written at the first start, every resume recorded beside them, and what a resume or a requeued
cluster job continues from."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

import cxr.conf  # noqa: F401  registers ${cxr.run_name:}, which config.yaml's hydra section resolves
from cxr.artifacts import run_provenance, write_json, write_text
from cxr.errors import ConfigError, UserError

log = logging.getLogger(__name__)


class RunDirectoryError(UserError, RuntimeError):
    """The run directory already holds a finished run."""


def global_rank() -> int:
    """This process's rank before the Trainer exists (from RANK / LOCAL_RANK / SLURM_PROCID, as Lightning reads
    them); 0 in a single-process run: only rank 0 writes the run directory's files."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


SWEPT_KEYS_ENV = "CXR_SWEPT_KEYS"
MAX_NAME_LENGTH = 80
_BARE = ("program", "model", "task", "experiment", "data")  # group choices named by their option alone
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(-\d+)?|\d+)(_|$)")


def safe_name(text: str) -> str:
    """``text`` as one directory name that a Hydra override can also carry unquoted: letters, digits and
    ``._+-`` (anything else becomes ``_``), at most MAX_NAME_LENGTH characters (a longer name keeps its start and
    a short hash of the whole, so two long names stay apart)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._-")
    if len(name) > MAX_NAME_LENGTH:
        name = name[: MAX_NAME_LENGTH - 9].rstrip("._-") + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def note_swept_keys(argv: list[str]) -> list[str]:
    """Remember the keys a ``-m`` command line sweeps (``program=C,D``, ``seed=range(3)``) for the jobs' run names,
    in the environment, which launchers pass on to jobs in other processes; returns ``argv`` unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # Hydra reports a malformed override itself, in its own words
        overrides = []
    os.environ[SWEPT_KEYS_ENV] = ",".join(o.key_or_group for o in overrides if o.is_sweep_override())
    return argv


def _name_part(override: str) -> str:
    key, _, value = override.partition("=")
    key = key.lstrip("+~")
    if key in _BARE:
        return value
    short = re.split(r"[./]", key)[-1]
    try:  # a search's sampled float, 0.002008037330173894, as 0.00201
        value = value if float(value).is_integer() else f"{float(value):.3g}"
    except ValueError:
        pass
    return f"{short}{value}" if re.match(r"[-+.\d]", value) else f"{short}_{value}"


def run_name(cfg: DictConfig) -> str:
    """The run's readable name: ``run_name=...`` made safe, else built from what differs: the program, the model
    and the task where they are not the defaults (thesis_cnn, binary), the seed when the command line sets it, and
    in a multirun the swept overrides (``D-seed2``, ``chexnet-densenet121-multilabel``, ``C-lr0.001``). evaluate.py,
    predict.py and export.py take the name of the run whose checkpoint they read."""
    if cfg.get("run_name"):
        return safe_name(cfg.run_name)
    if cfg.get("task_name", "train") != "train":
        checkpoint = Path(str(cfg.get("ckpt_path") or ""))
        run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        stamp = _TIMESTAMP.match(run.name)
        return safe_name((run.name[stamp.end() :] if stamp else "") or checkpoint.stem or cfg.task_name)
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    overrides = [o for o in (hydra.overrides.task if hydra else []) if "=" in o]
    parts = [str(cfg.program.name)]
    model = (cfg.get("model") or {}).get("net") or {}
    if model.get("name"):  # torchvision networks; the thesis network has none
        parts.append(str(model.name))
    if (cfg.get("task") or {}).get("name", "binary") != "binary":
        parts.append(str(cfg.task.name))
    swept = set()
    if hydra is not None and hydra.mode == RunMode.MULTIRUN:
        swept = set(filter(None, os.environ.get(SWEPT_KEYS_ENV, "").split(",")))
        swept |= set((hydra.sweeper.get("params") or {}).keys())  # a search's space (hparams_search=optuna_D)
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if key == "seed" or key in swept:
            parts.append(_name_part(override))
    return safe_name("-".join(dict.fromkeys(p for p in parts if p)))  # each part once, in order


def command_line_overrides() -> list[str]:
    """This job's command-line overrides, with relative paths that exist made absolute (for checkpoints)."""
    if not HydraConfig.initialized():
        return []
    overrides = []
    for override in HydraConfig.get().overrides.task:
        key, sep, value = override.partition("=")
        if sep and value and not os.path.isabs(value) and ("/" in value or os.sep in value) and os.path.exists(value):
            value = os.path.abspath(value)
        overrides.append(f"{key}{sep}{value}")
    return overrides


def prepare_run_directory(cfg: DictConfig, resuming: bool = False) -> Path:
    """Create ``paths.output_dir`` (never over a finished run, nor over an unfinished one unless resuming) and write
    its configs and run.json; returns it."""
    output_dir = Path(cfg.paths.output_dir)
    from cxr.run_lock import lock_run_directory

    lock_run_directory(output_dir)  # a second run in this directory is refused (cxr.run_lock)
    if (output_dir / "metrics.json").exists():
        raise RunDirectoryError(
            f"{output_dir} already holds a finished run (metrics.json); a new run never "
            "overwrites one: choose another hydra.run.dir"
        )
    if not resuming and any((output_dir / "checkpoints").glob("*.ckpt")):
        raise RunDirectoryError(
            f"{output_dir} holds an unfinished run; resume it with: python train.py resume={output_dir}"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    # this start's resolved config (a resume's differs from config.yaml, the first start's): what DDP ranks 1..N-1 run
    write_text(output_dir / ".hydra" / "resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if resuming and (output_dir / "run.json").is_file():
        _record_resume(cfg, output_dir)
        return output_dir
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(output_dir / "run.json", {"run_name": cfg.get("run_name"), **run_provenance()})
    return output_dir


def directory_size(directory: Path) -> int:
    """Bytes of every file below ``directory``."""
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file() and not f.is_symlink())


def record_directory_size(output_dir: Path) -> int:
    """Add the run directory's size at the end of the run to run.json (``directory_size_bytes`` and MB)."""
    run_file = Path(output_dir) / "run.json"
    provenance = json.loads(run_file.read_text()) if run_file.is_file() else {}
    size = directory_size(output_dir)
    provenance.update(directory_size_bytes=size, directory_size_mb=round(size / 1e6, 1))
    write_json(run_file, provenance)
    return size


def _record_resume(cfg: DictConfig, output_dir: Path) -> None:
    """Keep the first start's run.json and config.yaml; append this start to run.json's ``resumes`` list and save
    its resolved config as ``config.resume<N>.yaml``."""
    provenance = json.loads((output_dir / "run.json").read_text())
    resumes = provenance.setdefault("resumes", [])
    config_name = f"config.resume{len(resumes) + 1}.yaml"
    write_text(output_dir / config_name, OmegaConf.to_yaml(cfg, resolve=True))
    previous = {}
    if provenance.get("status") == "failed":  # this start may finish it: the failure moves to its resume entry
        provenance.pop("status")
        previous = {"after_failure": provenance.pop("failure", None)}
    resumes.append(
        {
            **run_provenance(),
            "config": config_name,
            "ckpt_path": cfg.get("ckpt_path"),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **previous,
        }
    )
    write_json(output_dir / "run.json", provenance)


@contextmanager
def failure_recorded(cfg: DictConfig, describe: Callable[[BaseException], str] = str) -> Iterator[None]:
    """A run that fails (a user error such as its data check, or a bug) keeps its directory and files
    (data_check.txt, train.log), marked ``"status": "failed"`` in run.json with the reason (``describe(error)``,
    one line), so that compare.py can say why it has no results. A finished run, or another run's directory
    (RunDirectoryError), is never marked."""
    try:
        yield
    except RunDirectoryError:
        raise
    except Exception as error:
        mark_failed(Path(cfg.paths.output_dir), describe(error))
        raise


def mark_failed(output_dir: Path, reason: str) -> None:
    """Write ``status: failed`` and ``failure`` (reason, time) into ``output_dir/run.json`` (rank 0 only)."""
    if global_rank() != 0 or not output_dir.is_dir() or (output_dir / "metrics.json").exists():
        return
    run_json = output_dir / "run.json"
    try:
        provenance = json.loads(run_json.read_text()) if run_json.is_file() else run_provenance()
        provenance.update(
            status="failed", failure={"reason": reason, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        )
        write_json(run_json, provenance)
    except (OSError, ValueError) as error:  # the run's own error matters more than this record
        log.warning("could not mark %s failed: %s", run_json, error)


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path=last`` means this run directory's ``checkpoints/last.ckpt``."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and "://" in str(ckpt_path):
        raise ConfigError(
            f"ckpt_path={ckpt_path}: only local checkpoint files are loaded (download it and give its path)"
        )
    if ckpt_path != "last":
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise RunDirectoryError(f"nothing to resume: {last} does not exist (no epoch finished before the crash?)")
    log.info("resuming from %s", last)
    return str(last)


def resume_arguments(argv: list[str]) -> list[str]:
    """Expand ``resume=<run dir>`` into that run's own overrides + ``hydra.run.dir=<run dir> ckpt_path=last``."""
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    run_dir = Path(resume[-1].partition("=")[2]).resolve()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise ConfigError(f"resume={run_dir}: not a run directory of train.py (no .hydra/overrides.yaml)")
    from cxr.replay import replayable

    others = [a for a in argv if not a.startswith("resume=")]
    stored = [
        o
        for o in OmegaConf.to_container(OmegaConf.load(overrides_file))
        if override_key(o) not in ("ckpt_path", "resume")
    ]  # this run's own (a resume adds them)
    previous = replayable(stored, f"resume={run_dir}: {overrides_file.name}", given=others)
    return [*previous, *others, f"hydra.run.dir={run_dir}", "ckpt_path=last"]


def override_key(override: str) -> str:
    """The key a Hydra override sets (``+a.b=1`` -> ``a.b``)."""
    return override.partition("=")[0].lstrip("+~")


def requeued_job(cfg: DictConfig) -> dict | None:
    """A cluster job restarted by its launcher (submitit: preempted or out of time, ``max_num_timeout``) finds its
    own ``checkpoints/last.ckpt`` in its run directory: it resumes from it (``ckpt_path=last``), recorded in
    config.yaml so that every rank does the same. Requeued after it had finished (the signal came during its
    last seconds): its metrics, nothing is rerun."""
    output_dir = Path(cfg.paths.output_dir)
    if os.environ.get("SUBMITIT_EXECUTOR") and (output_dir / "metrics.json").is_file():
        log.warning("requeued %s job had already finished: %s", os.environ["SUBMITIT_EXECUTOR"], output_dir)
        import json

        return json.loads((output_dir / "metrics.json").read_text())
    if (
        cfg.get("ckpt_path") is None
        and os.environ.get("SUBMITIT_EXECUTOR")
        and (output_dir / "checkpoints" / "last.ckpt").is_file()
        and not (output_dir / "metrics.json").exists()
    ):
        log.warning(
            "requeued %s job: resuming %s from checkpoints/last.ckpt", os.environ["SUBMITIT_EXECUTOR"], output_dir
        )
        with open_dict(cfg):
            cfg.ckpt_path = "last"
