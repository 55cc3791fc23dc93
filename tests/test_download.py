"""python -m cxr.download against a local HTTP server (tests/range_server.py) serving generated archives:
download, verify, extract, resume after a dropped connection, catch a corrupted archive, then train on it."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from cxr.bench.range_server import RangeServer
from cxr.data.download import METADATA_FILES, download_release, read_manifest, shipped, write_metadata
from cxr.data.extract import safe_extract
from cxr.errors import DownloadError
from tests.conftest import NIH_META, REPO, require_real_data

N_ARCHIVES = 3


def make_tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A miniature release: the demo generator's PNGs packed as images_01..03.tar.gz (each ``images/*.png``),
    its NIH-layout label file as Data_Entry_2017_v2020.csv, split lists by patient, and a manifest."""
    from cxr.data.demo import ensure_demo_dataset

    base = tmp_path_factory.mktemp("release")
    demo = base / "demo"
    labels = ensure_demo_dataset(demo, n_patients=24, images_per_patient=(1, 3), image_size=48, seed=1)
    table = pd.read_csv(labels)
    pngs = sorted(demo.glob("images_*/images/*.png"))
    files, rows = {}, []
    for i in range(N_ARCHIVES):
        chunk = pngs[i::N_ARCHIVES]
        name = f"images_{i + 1:02d}.tar.gz"
        files[name] = make_tarball({f"images/{p.name}": p.read_bytes() for p in chunk})
        rows.append(
            {
                "archive": name,
                "url": f"https://example.invalid/{name}",
                "md5": hashlib.md5(files[name]).hexdigest(),
                "images": len(chunk),
            }
        )
    files["Data_Entry_2017_v2020.csv"] = labels.read_bytes()
    test_patients = set(sorted(table["Patient ID"].unique())[::4])
    in_test = table["Patient ID"].isin(test_patients)
    files["test_list.txt"] = "".join(f"{n}\n" for n in table.loc[in_test, "Image Index"]).encode()
    files["train_val_list.txt"] = "".join(f"{n}\n" for n in table.loc[~in_test, "Image Index"]).encode()
    manifest = base / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    manifest.with_suffix(".sha256").write_text(
        "".join(  # what --mirror verifies the metadata against
            f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in METADATA_FILES
        )
    )
    tarballs = base / "tarballs"
    tarballs.mkdir()
    for name in rows:
        (tarballs / name["archive"]).write_bytes(files[name["archive"]])
    return {
        "files": files,
        "manifest": manifest,
        "n_images": len(pngs),
        "tarballs": tarballs,
        "names": sorted(p.name for p in pngs),
    }


def archive_requests(server: RangeServer) -> list[tuple[str, str | None]]:
    return [r for r in server.requests if r[0].endswith(".tar.gz")]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "cxr.download", "nih", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_download_from_an_empty_folder_then_train(release, tmp_path, make_cfg):
    from cxr.jobs.train import train

    target = tmp_path / "nih"
    with RangeServer(release["files"]) as server:
        result = run_cli(
            "--mirror", server.url, "--manifest", str(release["manifest"]), "--to", str(target), "--no-progress"
        )
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    for name in METADATA_FILES:
        assert (target / name).read_bytes() == release["files"][name]
    on_disk = sorted(p.name for p in target.glob("images_0*/images/*.png"))
    assert on_disk == release["names"]
    assert sorted(p.name for p in target.iterdir() if p.name.startswith("images_")) == [
        "images_001",
        "images_002",
        "images_003",
    ]
    assert not [
        p for p in (target / ".download").iterdir() if p.name.endswith((".tar.gz", ".part"))
    ]  # archives deleted after extraction

    cfg = make_cfg(
        [
            "data=nih",
            f"data.root={target}",
            f"data.labels={target}/Data_Entry_2017_v2020.csv",
            "split=official",
            "debug=fdr",
        ]
    )
    metrics = train(cfg)
    splits = pd.read_csv(Path(cfg.paths.output_dir) / "splits.csv")
    test_names = set(release["files"]["test_list.txt"].decode().split())
    assert set(splits.loc[splits["split"] == "test", "image"]) == test_names
    assert metrics["test"]["n"] == len(test_names)


def test_a_dropped_connection_is_resumed_with_a_range_request(release, tmp_path):
    victim = "images_02.tar.gz"
    with RangeServer(release["files"]) as server:
        server.drop_once.add(victim)
        download_release(tmp_path, release["manifest"], server.url, progress=False, echo=lambda _: None)
    requests = [r for r in archive_requests(server) if r[0] == victim]
    assert len(requests) == 2 and requests[0][1] is None
    assert requests[1][1] == f"bytes={len(release['files'][victim]) // 2}-"  # every byte before the drop kept
    assert len(list(tmp_path.glob("images_002/images/*.png"))) == read_manifest(release["manifest"])[1].images


def test_an_interrupted_run_resumes_from_its_partial_file(release, tmp_path):
    victim = "images_01.tar.gz"
    data = release["files"][victim]
    (tmp_path / ".download").mkdir()
    (tmp_path / ".download" / f"{victim}.part").write_bytes(data[:1000])  # left by a killed run
    with RangeServer(release["files"]) as server:
        download_release(tmp_path, release["manifest"], server.url, progress=False, echo=lambda _: None)
    assert [r[1] for r in archive_requests(server) if r[0] == victim] == ["bytes=1000-"]
    assert len(list(tmp_path.glob("images_*/images/*.png"))) == release["n_images"]


@pytest.mark.slow
def test_ctrl_c_keeps_the_partial_file_and_the_same_command_resumes(release, tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "cxr.download",
        "nih",
        "--manifest",
        str(release["manifest"]),
        "--to",
        str(tmp_path),
        "--no-progress",
        "--jobs",
        "1",
    ]
    with RangeServer(release["files"], throttle=(2048, 0.05)) as server:
        process = subprocess.Popen(
            [*command, "--mirror", server.url],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        part = tmp_path / ".download" / "images_01.tar.gz.part"
        deadline = time.monotonic() + 120
        while not (part.exists() and part.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130 and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1] == "cxr.download: interrupted; run the same command again to resume"
        kept = part.stat().st_size
        assert 0 < kept < len(release["files"]["images_01.tar.gz"])
        server.throttle = None
        again = subprocess.run(
            [*command, "--mirror", server.url], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
    assert again.returncode == 0, again.stderr
    assert ("images_01.tar.gz", f"bytes={kept}-") in server.requests
    assert len(list(tmp_path.glob("images_*/images/*.png"))) == release["n_images"]


def test_a_server_without_range_support_restarts_the_file(release, tmp_path):
    with RangeServer(release["files"], ranges=False) as server:
        server.drop_once.add("images_03.tar.gz")
        download_release(tmp_path, release["manifest"], server.url, progress=False, echo=lambda _: None)
    assert len(list(tmp_path.glob("images_*/images/*.png"))) == release["n_images"]


def test_a_corrupted_archive_is_fetched_again_once(release, tmp_path):
    with RangeServer(release["files"]) as server:
        server.corrupt["images_02.tar.gz"] = 1
        results = download_release(tmp_path, release["manifest"], server.url, progress=False, echo=lambda _: None)
    assert {r.archive.name: r.refetched for r in results} == {
        "images_01.tar.gz": False,
        "images_02.tar.gz": True,
        "images_03.tar.gz": False,
    }
    assert len(list(tmp_path.glob("images_*/images/*.png"))) == release["n_images"]


def test_an_archive_corrupted_twice_is_reported_in_one_line(release, tmp_path):
    with RangeServer(release["files"]) as server:
        server.corrupt["images_03.tar.gz"] = 2
        result = run_cli(
            "--mirror", server.url, "--manifest", str(release["manifest"]), "--to", str(tmp_path), "--no-progress"
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cxr.download: images_03.tar.gz: MD5 ") and "twice in a row" in line
    assert not (tmp_path / "images_003").exists() and not list(tmp_path.glob(".download/images_03*"))
    assert len(list(tmp_path.glob("images_00[12]/images/*.png"))) > 0  # the good archives are kept


def test_complete_archives_are_skipped_and_a_deleted_image_refetches_its_archive(release, tmp_path):
    with RangeServer(release["files"]) as server:
        download_release(tmp_path, release["manifest"], server.url, progress=False, echo=lambda _: None)
        first = len(archive_requests(server))
        results = download_release(tmp_path, release["manifest"], server.url, progress=False, echo=lambda _: None)
        assert len(archive_requests(server)) == first == N_ARCHIVES
        assert {r.status for r in results} == {"skipped"}
        next(iter(sorted(tmp_path.glob("images_002/images/*.png")))).unlink()
        download_release(tmp_path, release["manifest"], server.url, progress=False, echo=lambda _: None)
        assert [r[0] for r in archive_requests(server)[first:]] == ["images_02.tar.gz"]
    assert len(list(tmp_path.glob("images_*/images/*.png"))) == release["n_images"]


def test_archives_from_a_local_folder(release, tmp_path):
    results = download_release(
        tmp_path / "nih", release["manifest"], source_dir=release["tarballs"], progress=False, echo=lambda _: None
    )
    assert {r.status for r in results} == {"copied"}
    assert len(list((tmp_path / "nih").glob("images_*/images/*.png"))) == release["n_images"]
    assert (release["tarballs"] / "images_01.tar.gz").exists()  # the user's own files are never deleted


def test_a_member_leaving_the_folder_is_refused(tmp_path):
    for evil in ("../evil.png", "/tmp/evil.png", "images/../../evil.png"):
        tarball = tmp_path / "evil.tar.gz"
        tarball.write_bytes(make_tarball({"images/ok.png": b"x", evil: b"y"}))
        with pytest.raises(DownloadError, match="would be written outside"):
            safe_extract(tarball, tmp_path / "out")
        assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out" / "images" / "ok.png").exists()
    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w:gz") as tar:
        info = tarfile.TarInfo("images/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    tarball.write_bytes(link.getvalue())
    with pytest.raises(DownloadError, match="link or device"):
        safe_extract(tarball, tmp_path / "out")


def test_unreachable_mirror_and_bad_manifest_fail_in_one_line(release, tmp_path):
    with RangeServer({}) as server:
        url = server.url  # closed on exit: nothing listens there any more
    result = run_cli(
        "--mirror", url, "--manifest", str(release["manifest"]), "--to", str(tmp_path / "x"), "--no-progress"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"cxr.download: {url}Data_Entry_2017_v2020.csv: ")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    result = run_cli(
        "--from", str(tmp_path), "--manifest", str(release["manifest"]), "--to", str(blocked / "nih"), "--no-progress"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cxr.download: ") and str(blocked) in result.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("archive,url,md5,images\nimages_01.tar.gz,http://x/a,not-a-digest,5\n")
    with pytest.raises(DownloadError, match=r"bad.csv: line 2: md5 'not-a-digest' is not 32 hex digits"):
        read_manifest(bad)


def test_disk_needed_for_the_release():
    from cxr.data.download import disk_needed

    archives = read_manifest()
    gb = {
        key: disk_needed(archives, 3, keep, local) / 1e9
        for key, (keep, local) in {"default": (False, False), "keep": (True, False), "from": (False, True)}.items()
    }
    assert 44 < gb["from"] < 47 and 56 < gb["default"] < 59 and 89 < gb["keep"] < 92


def test_shipped_metadata_is_the_official_release(tmp_path):
    archives = read_manifest()
    assert len(archives) == 12 and sum(a.images for a in archives) == 112_120
    assert [a.folder for a in archives][::11] == ["images_001", "images_012"]
    written = write_metadata(tmp_path)
    assert [p.name for p in written] == list(METADATA_FILES)
    assert (
        len((tmp_path / "train_val_list.txt").read_text().split())
        + len((tmp_path / "test_list.txt").read_text().split())
        == 112_120
    )


@pytest.mark.real_data
def test_shipped_metadata_matches_the_real_release_files(tmp_path):
    """Skipped in a clone without ../shared/data, failed in CI (CXR_REQUIRE_REAL_DATA=1), as every real-data test."""
    require_real_data(NIH_META)
    write_metadata(tmp_path)
    for name in ("train_val_list.txt", "test_list.txt"):
        assert (tmp_path / name).read_bytes() == (NIH_META / name).read_bytes()
    with gzip.open(NIH_META / "Data_Entry_2017_v2020.csv.gz") as official:
        assert (tmp_path / "Data_Entry_2017_v2020.csv").read_bytes() == official.read()
    assert shipped("release_archives.csv").read_text() == (NIH_META / "release_archives.csv").read_text()


def test_the_real_release_comparison_fails_in_ci_when_its_data_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "NIH_META", tmp_path / "absent")
    monkeypatch.setenv("CXR_REQUIRE_REAL_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="CXR_REQUIRE_REAL_DATA=1"):
        test_shipped_metadata_matches_the_real_release_files(tmp_path)
    monkeypatch.delenv("CXR_REQUIRE_REAL_DATA")
    with pytest.raises(pytest.skip.Exception):  # a user's clone without the data: skipped
        test_shipped_metadata_matches_the_real_release_files(tmp_path)
