"""A run directory and its provenance: prepared once (a finished run is never overwritten), run.json and the
resolved config written at the first start, every resume recorded beside them, and what a resume or a requeued
cluster job continues from."""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cxr.artifacts import run_provenance, write_json, write_text
from cxr.errors import ConfigError

log = logging.getLogger(__name__)


class RunDirectoryError(RuntimeError):
    """The run directory already holds a finished run."""


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
        raise RunDirectoryError(f"{output_dir} already holds a finished run (metrics.json); a new run never "
                                "overwrites one: choose another hydra.run.dir")
    if not resuming and any((output_dir / "checkpoints").glob("*.ckpt")):
        raise RunDirectoryError(f"{output_dir} holds an unfinished run; resume it with: python train.py "
                                f"resume={output_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    # this start's resolved config (a resume's differs from config.yaml, the first start's): what DDP ranks 1..N-1 run
    write_text(output_dir / ".hydra" / "resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if resuming and (output_dir / "run.json").is_file():
        _record_resume(cfg, output_dir)
        return output_dir
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(output_dir / "run.json", run_provenance())
    return output_dir


def _record_resume(cfg: DictConfig, output_dir: Path) -> None:
    """Keep the first start's run.json and config.yaml; append this start to run.json's ``resumes`` list and save
    its resolved config as ``config.resume<N>.yaml``."""
    provenance = json.loads((output_dir / "run.json").read_text())
    resumes = provenance.setdefault("resumes", [])
    config_name = f"config.resume{len(resumes) + 1}.yaml"
    write_text(output_dir / config_name, OmegaConf.to_yaml(cfg, resolve=True))
    resumes.append({**run_provenance(), "config": config_name, "ckpt_path": cfg.get("ckpt_path"),
                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_json(output_dir / "run.json", provenance)


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path=last`` means this run directory's ``checkpoints/last.ckpt``."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and "://" in str(ckpt_path):
        raise ConfigError(f"ckpt_path={ckpt_path}: only local checkpoint files are loaded (download it and give "
                          "its path)")
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
    stored = [o for o in OmegaConf.to_container(OmegaConf.load(overrides_file))
              if override_key(o) not in ("ckpt_path", "resume")]  # this run's own (a resume adds them)
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
    if (cfg.get("ckpt_path") is None and os.environ.get("SUBMITIT_EXECUTOR")
            and (output_dir / "checkpoints" / "last.ckpt").is_file() and not (output_dir / "metrics.json").exists()):
        log.warning("requeued %s job: resuming %s from checkpoints/last.ckpt", os.environ["SUBMITIT_EXECUTOR"],
                    output_dir)
        with open_dict(cfg):
            cfg.ckpt_path = "last"
