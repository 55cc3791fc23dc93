"""logger=mlflow and logger=wandb beside the others: per-epoch metrics, final metrics with CIs, the resolved config,
the run's name and its files as artifacts, in MLflow's local SQLite store and in a W&B offline run folder."""

from __future__ import annotations

import pytest


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No tracking library reaches the network: W&B offline, MLflow and W&B telemetry off, caches in tmp."""
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    import wandb

    wandb.finish()


def test_several_loggers_compose_as_a_list_of_the_group(make_cfg):
    cfg = make_cfg(["logger=[tensorboard,mlflow,wandb]"])
    assert set(cfg.logger) == {"tensorboard", "mlflow", "wandb"}
    assert cfg.logger.mlflow.store.endswith("outputs/mlflow/mlflow.db") and cfg.logger.wandb.offline is True


@pytest.mark.slow
def test_one_run_is_tracked_in_mlflow_and_in_a_wandb_offline_folder(make_cfg, tmp_path, offline):
    import mlflow
    from mlflow.tracking import MlflowClient

    from cxr.jobs.train import train

    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    cfg = make_cfg(
        [
            "logger=[csv,mlflow,wandb]",
            "trainer.max_epochs=2",
            "data_check=false",
            "evaluation.bootstrap.n_resamples=20",
            f"logger.mlflow.store={store}",
            f"logger.mlflow.artifact_location={tmp_path / 'mlflow' / 'artifacts'}",
        ]
    )
    metrics = train(cfg)
    run_dir = tmp_path / "run1"

    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["cxr_train"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.mlflow.runName"] == cfg.run_name == "A" and run["status"] == "FINISHED"  # the run's own name
    assert run["metrics.test/auroc"] == pytest.approx(metrics["test"]["auroc"])
    assert run["metrics.test/ci/auroc/ci_low"] == pytest.approx(metrics["test"]["ci"]["auroc"]["ci_low"])
    assert len(MlflowClient(store).get_metric_history(run["run_id"], "val/auroc")) == 2  # one per epoch
    artifacts = {a.path for a in MlflowClient(store).list_artifacts(run["run_id"])}
    assert {"config.yaml", "metrics.json", "model_card.md", "training_curves.png", "history.csv"} <= artifacts

    folders = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1 and list(folders[0].glob("run-*.wandb"))  # the offline run, for `wandb sync`
