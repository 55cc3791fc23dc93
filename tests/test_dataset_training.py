"""Registered datasets through the whole run: masking of missing findings in the loss and the metrics, and
data=chexpert / data=mimic_cxr training (debug=fdr) and passing the data check on fixtures built from their real
label file (CheXpert) or exact published layout (MIMIC-CXR-JPG)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.models.losses import bce_with_logits, keras_bce
from tests.dataset_fixtures import chexpert_release, mimic_release

NAN = float("nan")


@pytest.mark.parametrize("loss", [bce_with_logits, keras_bce])
def test_missing_finding_contributes_no_loss_and_no_gradient(loss):
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.1, -0.4]], requires_grad=True)
    targets = torch.tensor([[1.0, NAN, 0.0], [0.0, 1.0, NAN]])
    value = loss(logits, targets)
    value.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 2] == 0  # the missing entries
    assert (logits.grad[~torch.isnan(targets)] != 0).all()
    labelled = ~torch.isnan(targets)
    expected = loss(logits.detach()[labelled][None], targets[labelled][None])  # the labelled entries alone
    assert math.isclose(float(value.detach()), float(expected), rel_tol=1e-6)
    # whatever the model says on a missing finding, the loss is the same
    other = logits.detach().clone()
    other[0, 1], other[1, 2] = -30.0, 30.0
    assert math.isclose(float(loss(other, targets)), float(value.detach()), rel_tol=1e-6)


def test_finding_auroc_scores_each_finding_on_its_labelled_images():
    from torchmetrics.functional.classification import binary_auroc

    from cxr.models.classifier import MISSING, FindingAUROC

    probabilities = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.8, 0.5], [0.7, 0.6, 0.5], [0.3, 0.4, 0.5]])
    targets = torch.tensor([[1.0, NAN, NAN], [0.0, 1.0, NAN], [1.0, 0.0, NAN], [0.0, NAN, NAN]])
    metric = FindingAUROC(["a", "b", "c"])
    metric.update(probabilities, targets.nan_to_num(MISSING).long())
    mean, per_finding = metric.compute_and_reset()
    assert set(per_finding) == {"a", "b"}  # c: not labelled at all, so not scored
    assert per_finding["b"] == float(binary_auroc(torch.tensor([0.8, 0.6]), torch.tensor([1, 0])))
    assert mean == (per_finding["a"] + per_finding["b"]) / 2


def test_bootstrap_scores_a_finding_on_its_labelled_images_only():
    from cxr.evaluation.multilabel import multilabel_bootstrap

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (60, 2)).astype(float)
    probabilities = np.clip(labels * 0.3 + rng.random((60, 2)) * 0.7, 0, 1)
    masked = labels.copy()
    masked[:20, 1] = np.nan
    patients = np.arange(60)
    full = multilabel_bootstrap(labels[20:], probabilities[20:], patients[20:], ["a", "b"], n_resamples=50)
    part = multilabel_bootstrap(masked, probabilities, patients, ["a", "b"], n_resamples=50)
    assert part["findings"]["b"]["auroc"]["value"] == full["findings"]["b"]["auroc"]["value"]
    assert part["findings"]["b"]["n_missing"] == 20
    assert part["findings"]["b"]["auroc"]["ci_low"] <= part["findings"]["b"]["auroc"]["value"]


def dataset_overrides(name: str, root: Path) -> list[str]:
    return [
        f"data={name}",
        f"data.root={root}",
        "split=official",
        "data.split.val=0.25",
        "program.preprocessing.image_size=64",
        "debug=fdr",
    ]


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("releases")
    return {"chexpert": chexpert_release(folder), "mimic_cxr": mimic_release(folder)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chexpert", "mimic_cxr"])
@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_dataset_trains_with_debug_fdr(make_cfg, releases, name, task):
    from cxr.jobs.train import train

    cfg = make_cfg([*dataset_overrides(name, releases[name]), f"task={task}"])
    train(cfg)
    output = Path(cfg.paths.output_dir)
    metrics = json.loads((output / "metrics.json").read_text())
    assert "OK: training can start" in (output / "data_check.txt").read_text()
    assert metrics["test"]["n"] > 0
    if task == "multilabel":  # findings the dataset does not label are reported as not scored, not as negatives
        findings = metrics["test"]["findings"]
        assert findings["Mass"]["n_positive"] == findings["Mass"]["n_negative"] == 0
        assert findings["Mass"]["auroc"]["value"] is None
    splits = (output / "splits.csv").read_text()
    assert f"{name}:" in splits


@pytest.mark.slow
def test_cxr_check_passes_and_refuses_the_thesis_split(releases, tmp_path):
    from tests.test_entry_points import assert_one_error_line, run

    root = releases["chexpert"]
    ok = run(["-m", "cxr.check", "data=chexpert", f"data.root={root}", "split=official"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "split=official: train" in ok.stdout + ok.stderr
    refused = run(["-m", "cxr.check", "data=chexpert", f"data.root={root}"], tmp_path)
    assert_one_error_line(refused, "split=thesis", "split=official")


@pytest.mark.slow
def test_merged_nih_and_chexpert_trains_with_per_source_masking_splits_and_metrics(make_cfg, releases):
    import pandas as pd

    from cxr.jobs.train import train
    from tests.conftest import NIH_SAMPLE, require_real_data

    require_real_data(NIH_SAMPLE)
    cfg = make_cfg(
        [
            "data=merged",
            "data.sources=[nih,chexpert]",
            f"data.releases.nih.root={NIH_SAMPLE / 'images'}",
            f"data.releases.nih.labels={NIH_SAMPLE / 'labels.csv'}",
            f"data.releases.chexpert.root={releases['chexpert']}",
            "split=official",
            "program.preprocessing.image_size=64",
            "task=multilabel",
            "debug=fdr",
        ]
    )
    train(cfg)
    output = Path(cfg.paths.output_dir)
    metrics = json.loads((output / "metrics.json").read_text())
    assert {"test", "test_nih", "test_chexpert"} <= set(metrics)
    # CheXpert labels no Mass: its test images are not scored on it (not counted as negatives)
    chexpert = metrics["test_chexpert"]["findings"]
    assert chexpert["Mass"]["n_positive"] + chexpert["Mass"]["n_negative"] == 0
    n_chexpert_test = len(pd.read_csv(output / "predictions_test_chexpert.csv"))
    assert metrics["test"]["findings"]["Mass"]["n_missing"] == n_chexpert_test
    splits = pd.read_csv(output / "splits.csv")
    splits["source"] = splits["patient"].str.split(":").str[0]
    assert set(splits["source"]) == {"nih", "chexpert"}
    assert (splits.groupby("patient")["split"].nunique() == 1).all()  # patient-disjoint within each source


@pytest.mark.slow
def test_nih_model_is_evaluated_on_chexpert_and_padchest_in_one_run(make_cfg, releases, tmp_path):
    """The field's protocol (train on one dataset, test on others on the findings they share), in one train.py run:
    external=[chexpert,padchest] with a CheXpert-layout and a PadChest-layout fixture from their real label files."""
    import gzip

    import pandas as pd

    from cxr.jobs.train import train
    from tests.conftest import NIH_SAMPLE, require_real_data
    from tests.reader_fixtures import png16, xrv_data

    require_real_data(NIH_SAMPLE)
    padchest_csv = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    rows = pd.read_csv(xrv_data() / padchest_csv, nrows=40, index_col=0, dtype=str, keep_default_na=False)
    padchest = tmp_path / "padchest"
    padchest.mkdir()
    with gzip.open(padchest / padchest_csv, "wt", newline="") as handle:
        rows.to_csv(handle)
    for i, row in enumerate(rows.itertuples()):
        png16(padchest / row.ImageDir / row.ImageID, seed=i, size=32)
    cfg = make_cfg(
        [
            "data=nih",
            f"data.root={NIH_SAMPLE / 'images'}",
            f"data.labels={NIH_SAMPLE / 'labels.csv'}",
            "split=patient",
            "data.split.train=0.6",
            "data.split.val=0.1",
            "external=[chexpert,padchest]",
            f"data.externals.chexpert.root={releases['chexpert']}",
            "data.externals.chexpert.rows=all",
            f"data.externals.padchest.root={padchest}",
            "program.preprocessing.image_size=64",
            "task=multilabel",
            "debug=fdr",
        ]
    )
    train(cfg)
    output = Path(cfg.paths.output_dir)
    metrics = json.loads((output / "metrics.json").read_text())
    assert "external_chexpert: images" in (output / "data_check.txt").read_text()
    for name in ("external_chexpert", "external_padchest"):
        scored = {f for f, m in metrics[name]["findings"].items() if m["auroc"]["value"] is not None}
        assert scored and "Mass" not in (scored if name == "external_chexpert" else set())
        drops = metrics[name]["drop_from_test"]["findings"]
        assert set(drops) <= scored
        for finding, drop in drops.items():  # the drop is internal minus external AUROC, with its CI
            assert math.isclose(drop["drop"], metrics["test"]["findings"][finding]["auroc"]["value"] - drop["external"])
            assert drop["ci_low"] <= drop["ci_high"]
    assert metrics["external_chexpert"]["drop_from_test"]["findings"]
    card = (output / "model_card.md").read_text()
    assert "## Where the model was tested" in card and "| external_padchest |" in card
    from cxr.evaluation.report import compare

    compare([output], out=tmp_path / "compare", n_resamples=20)
    text = (tmp_path / "compare" / "report.md").read_text()
    assert "Datasets side by side" in text and "external_chexpert" in text and "external_padchest" in text


def padchest_release(folder: Path, n: int = 40) -> Path:
    """PadChest's label CSV (the first ``n`` real rows) and a 16-bit PNG for each, in the release's folders."""
    import gzip

    import pandas as pd

    from tests.reader_fixtures import png16, xrv_data

    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    rows = pd.read_csv(xrv_data() / name, nrows=n, index_col=0, dtype=str, keep_default_na=False)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / name, "wt", newline="") as handle:
        rows.to_csv(handle)
    for i, row in enumerate(rows.itertuples()):
        png16(folder / row.ImageDir / row.ImageID, seed=i, size=32)
    return folder


def vindr_release(folder: Path, n: int = 24) -> Path:
    """VinDr-CXR's image_labels_{train,test}.csv made from the real reads of ``n`` images of the competition's box
    file, and a 12-bit DICOM for each."""
    import pandas as pd

    from cxr.data.datasets import vindr_cxr
    from tests.reader_fixtures import dicom, xrv_data

    boxes = pd.read_csv(xrv_data() / "vinbigdata-train.csv.gz", usecols=["image_id", "class_name", "rad_id"])
    boxes = boxes[boxes["image_id"].isin(boxes["image_id"].drop_duplicates().head(n))]
    marks = pd.crosstab([boxes["image_id"], boxes["rad_id"]], boxes["class_name"]).clip(upper=1)
    extra = ["COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]
    marks = marks.reindex(columns=[*vindr_cxr.LOCAL, *extra], fill_value=0)
    marks.index.names = ["image_id", "rad_ID"]
    images = marks.index.get_level_values(0).unique()
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    cut = 2 * len(images) // 3
    marks.loc[images[:cut]].reset_index().to_csv(folder / "annotations" / "image_labels_train.csv", index=False)
    test = marks.loc[images[cut:]].groupby(level=0).max().reset_index()
    test.to_csv(folder / "annotations" / "image_labels_test.csv", index=False)
    for i, image in enumerate(images):
        dicom(folder / ("train" if i < cut else "test") / f"{image}.dicom", seed=i, size=32)
    return folder


def rsna_release(folder: Path, n: int = 32) -> Path:
    """RSNA Pneumonia's two label files (the real rows of ``n`` patients) and a DICOM for each image, with the
    view, sex and age of its real header."""
    import zipfile

    import numpy as np
    import pandas as pd

    from tests.reader_fixtures import dicom, xrv_data

    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(xrv_data() / "kaggle_stage_2_train_labels.csv.zip") as archive:
        with archive.open("stage_2_train_labels.csv") as handle:
            labels = pd.read_csv(handle, dtype=str, keep_default_na=False)
    # half positive, half negative patients, so that every split holds both classes
    ids = pd.concat([labels[labels["Target"] == t]["patientId"].drop_duplicates().head(n // 2) for t in ("0", "1")])
    labels = labels[labels["patientId"].isin(ids)]
    labels.to_csv(folder / "stage_2_train_labels.csv", index=False)
    classes = labels[["patientId"]].assign(**{"class": np.where(labels["Target"] == "1", "Lung Opacity", "Normal")})
    classes.to_csv(folder / "stage_2_detailed_class_info.csv", index=False)
    headers = pd.read_csv(xrv_data() / "kaggle_stage_2_train_images_dicom_headers.csv.gz", index_col="PatientID")
    for i, image in enumerate(ids):
        head = headers.loc[image]
        dicom(folder / "stage_2_train_images" / f"{image}.dcm", head.ViewPosition, head.PatientSex,
              f"{int(head.PatientAge):03d}Y", seed=i, size=32)  # fmt: skip
    return folder


def openi_release(folder: Path, n: int = 60) -> Path:
    """Open-i's real reports (the first ``n``) and a PNG for each image they name; views come from the real
    DICOM-header table (data.options.metadata), as docs/datasets.md describes."""
    import tarfile

    from cxr.data.datasets import openi
    from tests.reader_fixtures import png8, xrv_data

    with tarfile.open(xrv_data() / "NLMCXR_reports.tgz") as archive:
        members = sorted((m for m in archive.getmembers() if m.name.endswith(".xml")), key=lambda m: m.name)[:n]
        (folder / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
        for member in members:
            data = archive.extractfile(member).read()
            (folder / "ecgen-radiology" / Path(member.name).name).write_bytes(data)
    for i, image in enumerate(openi.read(folder, {})["image"]):
        png8(folder / image, seed=i, size=32)
    return folder


READER_RELEASES = {
    "padchest": padchest_release,
    "vindr_cxr": vindr_release,
    "rsna_pneumonia": rsna_release,
    "openi": openi_release,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(READER_RELEASES))
def test_readers_datasets_train_and_pass_the_check(make_cfg, tmp_path, name):
    """The readers' datasets through the common code: PadChest's 16-bit PNGs and RSNA's and Open-i's images (no
    published split: patient split), VinDr-CXR's and RSNA's DICOM (through cxr/data/dicom.py), trained with
    debug=fdr after the data check, each on a fixture built from its real label file."""
    from cxr.jobs.train import train
    from tests.reader_fixtures import xrv_data

    root = READER_RELEASES[name](tmp_path / name)
    overrides = [*dataset_overrides(name, root), "task=multilabel"]
    if name == "openi":  # views from the published DICOM headers' table
        overrides.append(f"data.options.metadata={xrv_data() / 'nlmcxr_dicom_metadata.csv.gz'}")
    cfg = make_cfg(overrides)
    train(cfg)
    output = Path(cfg.paths.output_dir)
    check = (output / "data_check.txt").read_text()
    assert "OK: training can start" in check
    assert ("DICOM 32x32" in check) == (name in ("vindr_cxr", "rsna_pneumonia"))
    assert json.loads((output / "metrics.json").read_text())["test"]["n"] > 0
