"""Program C for a few epochs on the real NIH sample, with the full-resolution originals as external set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.global_hydra import GlobalHydra
from sklearn.metrics import confusion_matrix, roc_auc_score

from cxr.jobs.train import train
from tests.conftest import NIH_SAMPLE, compose_config, require_real_data
from tests.test_train import check_run_directory


@pytest.mark.slow
@pytest.mark.real_data
def test_program_c_trains_on_the_real_nih_sample(tmp_path):
    require_real_data(NIH_SAMPLE)
    cfg = compose_config(
        "train",
        ["experiment=thesis_nih_sample", "program=C", "trainer.max_epochs=3", "callbacks.early_stopping=null"],
        tmp_path / "run",
    )
    try:
        metrics = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    output_dir = Path(cfg.paths.output_dir)
    saved = check_run_directory(output_dir, sets=("test", "external"))
    assert saved == json.loads(json.dumps(metrics))  # what was returned is what was written

    labelled = pd.read_csv(NIH_SAMPLE / "labels.csv")
    external = pd.read_csv(NIH_SAMPLE / "full-res" / "labels.csv")
    splits = pd.read_csv(output_dir / "splits.csv")
    assert len(labelled) == 963 and len(splits) == 963 - 48  # data.exclude=external_patients (one image each)
    assert not set(splits["patient"]) & set(external["Patient ID"])
    assert saved["leakage"]["external_images"]["count"] == saved["leakage"]["external_patients"]["count"] == 0
    sizes = splits["split"].value_counts()
    assert sizes["train"] == round(4606 / 5606 * 915) and sizes["val"] == round(500 / 5606 * 915)
    assert saved["split"]["patients_in_several_splits"] > 0  # the thesis' image shuffle ignores patients
    assert saved["external"]["n"] == 48
    assert saved["epochs_trained"] == 3
    # program C scores the weights at the end of fit (the thesis' choice), and says which file and epoch
    assert saved["checkpoint"] == os.path.join("checkpoints", "last.ckpt") and saved["checkpoint_epoch"] == 3
    assert (output_dir / saved["checkpoint"]).is_file()
    for name in ("test", "external"):  # the saved numbers are those of the saved predictions (sklearn recomputes)
        predictions = pd.read_csv(output_dir / f"predictions_{name}.csv")
        assert saved[name]["auroc"] == pytest.approx(
            roc_auc_score(predictions["label"], predictions["probability"]), abs=1e-9
        )
        predicted = (predictions["probability"] > 0.5).astype(int)  # the decision rule: a tie is class 0
        assert (
            saved[name]["confusion_matrix"] == confusion_matrix(predictions["label"], predicted, labels=[0, 1]).tolist()
        )
        assert set(predictions["image"]) == set(splits.loc[splits["split"] == "test", "image"]) or name != "test"
