"""python -m cxr.download for the releases beyond NIH: Open-i from a local HTTP server (tests' range server), the
registration-gated ones --from a folder of archives, each a tiny synthetic release in the real layout (real label
rows where torchxrayvision's wheel ships them). The published counts are swapped for the fixture's own where a
test needs the release to pass; the CLI runs as users run it where the published counts must refuse it."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from cxr.bench.range_server import RangeServer
from cxr.cli import download_main
from cxr.data.dataset_releases import RELEASES
from cxr.data.datasets import READERS
from cxr.data.extract import archive_members, safe_unpack
from cxr.errors import DownloadError
from tests.conftest import REPO
from tests.dataset_fixtures import chexpert_release, mimic_release
from tests.reader_fixtures import dicom, png8, png16

PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


def xrv_data() -> Path:
    """torchxrayvision's data/ folder, found without importing it (and torch: seconds per test run)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        message = "torchxrayvision (its wheel ships the real label files) is not installed"
        if os.environ.get("CXR_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message + " (CI installs .[all], which holds it)")
        pytest.skip(message)
    return Path(spec.submodule_search_locations[0]) / "data"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "cxr.download", *args, "--no-progress"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def published(monkeypatch, name: str, images: int, **files: int | None) -> None:
    """Swap a release's published counts for the fixture's (``files``: archive pattern -> count)."""
    release = RELEASES[name]
    archives = tuple(dataclasses.replace(a, files=files.get(a.pattern, a.files)) for a in release.archives)
    monkeypatch.setitem(RELEASES, name, dataclasses.replace(release, images=images, archives=archives))


def tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_tree(folder: Path, target: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as packed:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                packed.write(path, prefix + path.relative_to(folder).as_posix())
    return target


# ---------------------------------------------------------------- Open-i, over HTTP


@pytest.fixture(scope="module")
def openi_files(tmp_path_factory):
    """The three NLMCXR archives: 4 real reports (xrv's copy of NLMCXR_reports.tgz) with a PNG and a DICOM for
    each image they name, flat as in the release."""
    base = tmp_path_factory.mktemp("openi")
    with tarfile.open(xrv_data() / "NLMCXR_reports.tgz") as real:
        reports = {m.name: real.extractfile(m).read() for m in real.getmembers() if m.name.endswith(("/1.xml", "/2.xml", "/3.xml", "/4.xml"))}  # fmt: skip
    (base / "ecgen-radiology").mkdir()
    for name, data in reports.items():
        (base / name).write_bytes(data)
    images = READERS["openi"](base, {})["image"].tolist()
    pngs, dicoms = {}, {}
    for i, image in enumerate(images):
        png8(base / image, seed=i)
        dicom(base / "dcm" / (image.removeprefix("CXR").removesuffix(".png") + ".dcm"), "PA" if i % 2 else "LL", seed=i)
        pngs[image] = (base / image).read_bytes()
        dicoms[image[3:-4] + ".dcm"] = (base / "dcm" / (image[3:-4] + ".dcm")).read_bytes()
    files = {
        "NLMCXR_png.tgz": tgz(pngs),
        "NLMCXR_reports.tgz": tgz(reports),
        "NLMCXR_dcm.tgz": tgz(dicoms),
    }
    return {"files": files, "images": len(images), "reports": len(reports)}


def test_openi_downloads_resumes_and_reads(openi_files, tmp_path, monkeypatch, capsys):
    n = openi_files["images"]
    published(monkeypatch, "openi", n, **{"NLMCXR_png.tgz": n, "NLMCXR_reports.tgz": openi_files["reports"]})
    with RangeServer(openi_files["files"]) as server:
        server.drop_once.add("NLMCXR_png.tgz")
        assert download_main(["openi", "--mirror", server.url, "--to", str(tmp_path), "--no-progress"]) == 0
        first = len(server.requests)
        assert download_main(["openi", "--mirror", server.url, "--to", str(tmp_path), "--no-progress"]) == 0
        assert len(server.requests) == first  # every archive marked done: nothing fetched again
    png = [r for r in server.requests if r[0] == "NLMCXR_png.tgz"]
    assert png == [
        ("NLMCXR_png.tgz", None),
        ("NLMCXR_png.tgz", f"bytes={len(openi_files['files']['NLMCXR_png.tgz']) // 2}-"),
    ]
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"  data=openi data.root={tmp_path}"
    sha = hashlib.sha256(openi_files["files"]["NLMCXR_png.tgz"]).hexdigest()
    assert f"SHA-256 of what was received: {sha} (no checksum is published)" in out
    assert not list((tmp_path / ".download").glob("*.tgz")) and not list(
        (tmp_path / ".download").glob("*.part")
    )  # deleted once unpacked
    frame = READERS["openi"](tmp_path, {})
    assert len(frame) == n and frame["path"].notna().all()
    assert sorted(frame["view_position"].unique()) == ["LL", "PA"]  # the headers of the unpacked DICOMs


def test_openi_against_the_published_counts_as_users_run_it(openi_files, tmp_path):
    with RangeServer(openi_files["files"]) as server:
        result = run_cli("openi", "--mirror", server.url, "--to", str(tmp_path))
    line = one_error_line(result)
    assert line.startswith(f"cxr.download: {tmp_path}/.download/NLMCXR_png.tgz: holds {openi_files['images']} .png")
    assert "the published release has 7,470" in line and not list(tmp_path.glob("*.png"))
    with RangeServer({}) as server:
        url = server.url
    line = one_error_line(run_cli("openi", "--mirror", url, "--to", str(tmp_path / "x")))
    assert line.startswith(f"cxr.download: {url}NLMCXR_png.tgz: ")


# ---------------------------------------------------------------- CheXpert, --from


@pytest.fixture(scope="module")
def chexpert_zip(tmp_path_factory):
    base = tmp_path_factory.mktemp("chexpert")
    root = chexpert_release(base / "unpacked", patients=3, valid_patients=2)
    archives = base / "archives"
    archives.mkdir()
    zip_tree(root, archives / "CheXpert-v1.0-small.zip", prefix="CheXpert-v1.0-small/")
    rows = len(pd.read_csv(root / "train.csv")) + len(pd.read_csv(root / "valid.csv"))
    return {"archives": archives, "images": rows}


def test_chexpert_from_a_folder(chexpert_zip, tmp_path, monkeypatch, capsys):
    n = chexpert_zip["images"]
    published(monkeypatch, "chexpert", n, **{"CheXpert-v1.0-small.zip": n, "CheXpert-v1.0.zip": n})
    assert (
        download_main(["chexpert", "--from", str(chexpert_zip["archives"]), "--to", str(tmp_path), "--no-progress"])
        == 0
    )
    root = tmp_path / "CheXpert-v1.0-small"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"  data=chexpert data.root={root}"
    assert READERS["chexpert"](root, {})["path"].notna().sum() == n
    assert (chexpert_zip["archives"] / "CheXpert-v1.0-small.zip").exists()  # the user's files are never deleted


def test_chexpert_missing_short_or_damaged_archives_fail_in_one_line(chexpert_zip, tmp_path):
    line = one_error_line(run_cli("chexpert", "--from", str(tmp_path), "--to", str(tmp_path / "out")))
    assert line == (
        f"cxr.download: {tmp_path}: no CheXpert-v1.0-small.zip or CheXpert-v1.0.zip: expected "
        "CheXpert-v1.0-small.zip or CheXpert-v1.0.zip (from Stanford AIMI, after registration)"
    )
    line = one_error_line(run_cli("chexpert", "--from", str(chexpert_zip["archives"]), "--to", str(tmp_path / "out")))
    assert f"holds {chexpert_zip['images']} .jpg files; the published release has 223,648" in line
    assert not (tmp_path / "out" / "CheXpert-v1.0-small").exists()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = bytearray((chexpert_zip["archives"] / "CheXpert-v1.0-small.zip").read_bytes())
    (damaged / "CheXpert-v1.0-small.zip").write_bytes(bytes(data[: len(data) // 2]))  # a cut-off download
    line = one_error_line(run_cli("chexpert", "--from", str(damaged), "--to", str(tmp_path / "out")))
    assert line.startswith(
        f"cxr.download: {damaged}/CheXpert-v1.0-small.zip: not a readable zip archive (File is not a zip file)"
    )


def test_a_damaged_member_keeps_what_was_unpacked(chexpert_zip, tmp_path, monkeypatch):
    n = chexpert_zip["images"]
    published(monkeypatch, "chexpert", n, **{"CheXpert-v1.0-small.zip": n})
    assert (
        download_main(["chexpert", "--from", str(chexpert_zip["archives"]), "--to", str(tmp_path), "--no-progress"])
        == 0
    )
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jpg"))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = bytearray((chexpert_zip["archives"] / "CheXpert-v1.0-small.zip").read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as packed:
        info = next(i for i in packed.infolist() if i.filename.endswith(".jpg"))
    data[info.header_offset + 30 + len(info.filename) + 40] ^= 0xFF  # a flipped byte inside the first JPEG
    (damaged / "CheXpert-v1.0-small.zip").write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="damaged archive"):
        from cxr.data.dataset_download import prepare

        prepare("chexpert", tmp_path, damaged, progress=False, echo=lambda _: None)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jpg") if "damaged" not in p.parts) == before
    assert not list((tmp_path / ".download").glob("*.partial"))


# ---------------------------------------------------------------- PadChest: a labels CSV and N.zip per folder


def test_padchest_folders_counted_against_the_labels_csv(tmp_path, monkeypatch, capsys):
    rows = pd.read_csv(xrv_data() / PADCHEST_CSV, nrows=12, index_col=0, dtype=str, keep_default_na=False)
    rows["ImageDir"] = ["0", "0", "0", "0", "1", "1", "1", "1", "1", "7", "7", "7"]  # three folders
    archives = tmp_path / "archives"
    archives.mkdir()
    with gzip.open(archives / PADCHEST_CSV, "wt", newline="") as handle:
        rows.to_csv(handle)
    for folder, group in rows.groupby("ImageDir"):
        with zipfile.ZipFile(archives / f"{folder}.zip", "w") as packed:  # flat, as BIMCV's zips are
            for i, image in enumerate(group["ImageID"]):
                png16(tmp_path / "png" / image, seed=i)
                packed.write(tmp_path / "png" / image, image)
    published(monkeypatch, "padchest", 12)
    argv = ["padchest", "--from", str(archives), "--no-progress"]
    assert download_main([*argv, "--to", str(tmp_path / "all")]) == 0
    assert READERS["padchest"](tmp_path / "all", {})["path"].notna().all()
    assert sorted(p.name for p in (tmp_path / "all").iterdir() if p.is_dir()) == [".download", "0", "1", "7"]
    (archives / "1.zip").rename(tmp_path / "1.zip")
    assert download_main([*argv, "--to", str(tmp_path / "some")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err
        == f"cxr.download: {archives}: 1 of the 3 image archives the labels CSV needs are missing (first: 1.zip); --partial unpacks those present"
    )
    assert download_main([*argv, "--to", str(tmp_path / "some"), "--partial"]) == 0
    assert "PadChest: 7 of the 12 labelled images on disk" in capsys.readouterr().out
    with zipfile.ZipFile(archives / "7.zip", "w") as packed:  # one image short of what the CSV places in 7/
        packed.writestr(rows["ImageID"].iloc[-1], b"x")
    assert download_main([*argv, "--to", str(tmp_path / "some"), "--partial"]) == 1
    assert (
        "7.zip: holds 1 .png files; the published release has 3 (as many as its labels CSV places in 7/)"
        in capsys.readouterr().err
    )


# ---------------------------------------------------------------- PhysioNet: SHA256SUMS.txt


def sha256sums(root: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}" for p in sorted(root.rglob("*")) if p.is_file()]  # fmt: skip
    (root / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")


def test_mimic_wget_tree_verified_in_place(tmp_path, monkeypatch, capsys):
    source = tmp_path / "download"
    mimic_release(source / "physionet.org" / "files", patients=4)
    root = source / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.0.0"
    sha256sums(root)
    n = len(READERS["mimic_cxr"](root, {}))
    published(monkeypatch, "mimic_cxr", n)
    assert download_main(["mimic_cxr", "--from", str(source), "--to", str(tmp_path / "unused"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "files match the publisher's SHA-256" in out and out.strip().endswith(f"data=mimic_cxr data.root={root}")
    assert not (tmp_path / "unused").exists()  # nothing copied
    victim = next(root.glob("files/*/*/*/*.jpg"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    assert download_main(["mimic_cxr", "--from", str(source), "--no-progress"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"cxr.download: {victim}: SHA-256 is not the one SHA256SUMS.txt lists (1 such files)"
    )


def test_vindr_zip_and_rsna_zip_from_a_folder(tmp_path, monkeypatch):
    vindr = tmp_path / "vindr"
    (vindr / "annotations").mkdir(parents=True)
    ids = [f"{i:032x}" for i in range(5)]
    reads = pd.DataFrame({"image_id": ids[:3], "rad_ID": ["R1", "R2", "R3"], "Cardiomegaly": [1, 0, 0], "No finding": [0, 1, 1]})  # fmt: skip
    reads.to_csv(vindr / "annotations" / "image_labels_train.csv", index=False)
    reads.drop(columns="rad_ID").iloc[:2].assign(image_id=ids[3:]).to_csv(vindr / "annotations" / "image_labels_test.csv", index=False)  # fmt: skip
    for i, image in enumerate(ids):
        dicom(vindr / ("train" if i < 3 else "test") / f"{image}.dicom", seed=i)
    sha256sums(vindr)
    archives = tmp_path / "archives"
    archives.mkdir()
    zip_tree(vindr, archives / "vindr-cxr-1.0.0.zip", prefix="vindr-cxr-1.0.0/")
    published(monkeypatch, "vindr_cxr", 5, **{"vindr-cxr*.zip": 5})
    assert download_main(["vindr_cxr", "--from", str(archives), "--to", str(tmp_path / "v"), "--no-progress"]) == 0
    assert len(READERS["vindr_cxr"](tmp_path / "v" / "vindr-cxr-1.0.0", {})["path"].dropna()) == 5

    labels = pd.read_csv(zipfile.ZipFile(xrv_data() / "kaggle_stage_2_train_labels.csv.zip").open("stage_2_train_labels.csv"), dtype=str, keep_default_na=False)  # fmt: skip
    labels = labels[labels["patientId"].isin(labels["patientId"].drop_duplicates().iloc[:4])]
    with zipfile.ZipFile(archives / "rsna-pneumonia-detection-challenge.zip", "w") as packed:
        packed.writestr("stage_2_train_labels.csv", labels.to_csv(index=False))
        classes = labels[["patientId"]].assign(**{"class": ["Lung Opacity" if t == "1" else "Normal" for t in labels["Target"]]})  # fmt: skip
        packed.writestr("stage_2_detailed_class_info.csv", classes.to_csv(index=False))
        for i, image in enumerate(labels["patientId"].unique()):
            dicom(tmp_path / "dcm" / f"{image}.dcm", seed=i)
            packed.write(tmp_path / "dcm" / f"{image}.dcm", f"stage_2_train_images/{image}.dcm")
        packed.writestr("stage_2_test_images/test0.dcm", (tmp_path / "dcm" / f"{image}.dcm").read_bytes())
    published(monkeypatch, "rsna_pneumonia", 4, **{"rsna-pneumonia-detection-challenge.zip": 5})
    assert download_main(["rsna_pneumonia", "--from", str(archives), "--to", str(tmp_path / "r"), "--no-progress"]) == 0
    assert READERS["rsna_pneumonia"](tmp_path / "r", {})["path"].notna().sum() == 4


# ---------------------------------------------------------------- unsafe archives


def test_unsafe_zip_members_and_oversized_archives_are_refused(tmp_path, monkeypatch):
    for evil in ("../evil.jpg", "/tmp/evil.jpg", "a/../../evil.jpg", "C:/evil.jpg"):
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as packed:
            packed.writestr("a/ok.jpg", b"x")
            packed.writestr(zipfile.ZipInfo(evil), b"y")
        with pytest.raises(DownloadError, match="would be written outside"):
            archive_members(archive)
    with zipfile.ZipFile(archive, "w") as packed:
        link = zipfile.ZipInfo("a/link.jpg")
        link.external_attr = 0o120777 << 16  # a symbolic link, as zip -y stores it
        packed.writestr(link, "/etc/passwd")
    with pytest.raises(DownloadError, match="link or device"):
        archive_members(archive)
    with zipfile.ZipFile(archive, "w") as packed:
        packed.writestr("a/big.jpg", b"\0" * 100_000)
    usage = dataclasses.make_dataclass("usage", ["total", "used", "free"])
    monkeypatch.setattr("shutil.disk_usage", lambda _: usage(1, 1, 50_000))
    with pytest.raises(DownloadError, match="unpacks to 0.0 GB, .* free; nothing extracted"):
        safe_unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "a").exists()
