"""Shared fixtures: configs composed with Hydra's compose API, a small demo dataset, the real NIH sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "conf"  # shipped in the wheel as cxr.conf (pyproject: package-dir)
SHARED_DATA = REPO.parent / "shared" / "data"
NIH_SAMPLE = SHARED_DATA / "nih"
NIH_META = SHARED_DATA / "nih-meta"


def require_real_data(path: Path = SHARED_DATA) -> Path:
    """Skip when the NIH sample is absent (a user's clone); fail instead when CXR_REQUIRE_REAL_DATA=1 (CI)."""
    if not path.exists():
        message = f"real NIH data not found at {path}"
        if os.environ.get("CXR_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message + " (CXR_REQUIRE_REAL_DATA=1: real-data tests are mandatory here)")
        pytest.skip(message)
    return path


def import_or_skip(module: str, reason: str = ""):
    """pytest.importorskip, except that CI (CXR_REQUIRE_REAL_DATA=1, where `.[all]` is installed) fails instead."""
    if os.environ.get("CXR_REQUIRE_REAL_DATA") == "1":
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError as error:
            pytest.fail(f"{module} does not import in CI, where the extras are installed: {error}")
    return pytest.importorskip(module, reason=reason or None)


def DEMO_OVERRIDES(root: Path) -> list[str]:
    """Point data=demo at the small session demo set (same generator arguments, so it is not rebuilt)."""
    return [
        f"data.root={root}",
        f"data.labels={root}/Data_Entry_demo.csv",
        "data.demo.n_patients=40",
        "data.demo.images_per_patient=[1,4]",
        "data.demo.image_size=96",
    ]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset generated once per test session."""
    from cxr.data.demo import ensure_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "demo"
    ensure_demo_dataset(root, n_patients=40, images_per_patient=(1, 4), image_size=96, seed=0)
    return root


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose like the command line would, with the run directory set to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(REPO)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path, demo_root):
    """Factory: a train (or evaluate) config on the small demo data, writing into a fresh tmp directory."""
    counter = {"n": 0}

    def make(overrides: list[str] = (), config_name: str = "train") -> DictConfig:
        counter["n"] += 1
        on_demo = not any(o.startswith(("data=", "experiment=")) for o in overrides)
        base = DEMO_OVERRIDES(demo_root) if on_demo else []
        return compose_config(config_name, base + list(overrides), tmp_path / f"run{counter['n']}")

    yield make
    GlobalHydra.instance().clear()
