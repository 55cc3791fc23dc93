"""python -m cxr.serve as users run it: a subprocess on loopback, real HTTP, a checkpoint trained here (one epoch of
program D on the demo set), the answers compared with predict.py's, every bad upload, the page in headless Chromium,
and a graceful shutdown with requests in flight (last: it stops the module's server)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("pydicom", reason="pip install -e '.[predict]'")
pytest.importorskip("litserve", reason="pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="pip install -e '.[serve]'")

from cxr.jobs.predict import predict  # noqa: E402
from cxr.jobs.train import train  # noqa: E402
from tests.conftest import DEMO_OVERRIDES, NIH_SAMPLE, compose_config, require_real_data  # noqa: E402
from tests.dicom_fixtures import (
    PATIENT_BIRTH,
    PATIENT_ID,
    PATIENT_NAME,
    SOURCE_PNG,
    dataset,  # noqa: E402
    save,
    source_pixels,
    write_broken_set,
    write_lossless_set,
)

pytestmark = [pytest.mark.slow, pytest.mark.real_data]  # trains a checkpoint and runs the service (about a minute)
PROBABILITY_TOLERANCE = 1e-5  # same prepared pixels; only the batch composition differs (ONNX Runtime kernels)
SECRETS = (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH, "Hospital of Identifiable")
MAX_UPLOAD_MB = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(demo_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config(
        "train",
        DEMO_OVERRIDES(demo_root)
        + ["program=D", "trainer.max_epochs=1", "logger=csv", "evaluation.bootstrap.n_resamples=50"],
        run,
    )
    train(cfg)
    return run / json.loads((run / "metrics.json").read_text())["checkpoint"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Real PNGs and a JPEG, lossless DICOMs of one PNG (plain, RLE, JPEG 2000, MONOCHROME1, no preamble), a
    lateral CT, and broken files."""
    require_real_data()
    folder = tmp_path_factory.mktemp("uploads")
    files = {"png": folder / "source.png", "jpeg": folder / "as_jpeg.jpg"}
    shutil.copy(SOURCE_PNG, files["png"])
    Image.open(SOURCE_PNG).convert("L").save(files["jpeg"], quality=95)
    thumbnail = next(p for p in sorted((NIH_SAMPLE / "images").glob("*.png")) if Image.open(p).size == (64, 64))
    files["thumbnail"] = Path(shutil.copy(thumbnail, folder / "thumbnail.png"))
    files.update(write_lossless_set(folder / "dicom", source_pixels()))
    files.update(write_broken_set(folder / "broken", source_pixels()))
    (folder / "cut.png").write_bytes(SOURCE_PNG.read_bytes()[:2000])
    files["cut_png"] = folder / "cut.png"
    from pydicom.encaps import encapsulate

    mpeg = dataset(source_pixels(), 8)
    mpeg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder for it
    mpeg.PixelData = encapsulate([b"\x00" * 64])
    files["mpeg2"] = save(mpeg, folder / "broken" / "mpeg2.dcm")
    Image.new("L", (6001, 6001)).save(folder / "huge.png")  # a few kB, 36 million pixels
    files["huge"] = folder / "huge.png"
    return files


@pytest.fixture(scope="module")
def service(checkpoint, tmp_path_factory):
    """``python -m cxr.serve ckpt_path=... port=...`` in a fresh working directory, ready; its log and temp dir."""
    home = tmp_path_factory.mktemp("service")
    (home / "tmp").mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(home / "tmp")}
    log = open(home / "service.log", "wb")
    # a 2 s batching window: concurrent requests share batches, and the shutdown test finds them in flight
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxr.serve",
            f"ckpt_path={checkpoint}",
            f"port={port}",
            "batch_timeout=2.0",
            "max_batch_size=8",
            f"max_upload_mb={MAX_UPLOAD_MB}",
        ],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the service exited with {process.returncode}: {(home / 'service.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    else:
        pytest.fail("the service was not ready within 300 s")
    yield {"url": url, "process": process, "home": home, "log": home / "service.log"}
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    log.close()


def post(url: str, path: Path, multipart: bool = False, **kwargs) -> httpx.Response:
    data = path.read_bytes()
    if multipart:
        return httpx.post(url, files={"file": (path.name, data)}, timeout=120, **kwargs)
    return httpx.post(url, content=data, timeout=120, **kwargs)


def test_health_ready_page_and_metrics(service):
    url = service["url"]
    assert httpx.get(url + "/health").text == "ok"
    assert httpx.get(url + "/ready").status_code == 200
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="drop"' in page.text
    metrics = httpx.get(url + "/metrics")
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    assert 'cxr_serve_requests_total{endpoint="/ready",status="200"}' in metrics.text


def test_concurrent_answers_equal_predict_py(service, checkpoint, inputs, tmp_path):
    good = {
        k: v for k, v in inputs.items() if k in ("png", "jpeg", "thumbnail", "lateral_ct") or v.parent.name == "dicom"
    }
    cfg = compose_config(
        "predict",
        [f"ckpt_path={checkpoint}", f"inputs=[{','.join(map(str, good.values()))}]", "progress=false", "json=true"],
        tmp_path / "predict",
    )
    assert predict(cfg) == 0
    chosen = json.loads((tmp_path / "predict" / "predictions.json").read_text())["inference"]
    expected = pd.read_csv(tmp_path / "predict" / "predictions.csv", keep_default_na=False).set_index("path")
    jobs = [(path, i % 2 == 1) for i, path in enumerate(list(good.values()) * 2)]  # raw and multipart, twice each
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: post(service["url"] + "/predict", *job), jobs))
    batch_sizes = []
    for (path, _), response in zip(jobs, answers):
        assert response.status_code == 200, response.text
        answer, row = response.json(), expected.loc[str(path)]
        (output,) = answer["outputs"]
        assert output["name"] == "finding"
        assert abs(output["probability"] - float(row["probability_finding"])) <= PROBABILITY_TOLERANCE
        assert output["decision"] == int(row["decision_finding"])
        assert output["threshold"] == pytest.approx(float(row["threshold_finding"]))
        assert answer["operating_point"] == row["threshold_source"] and "run operating point" in row["threshold_source"]
        assert answer["input"]["format"] == row["format"]
        assert row["warning"] in "; ".join(answer["warnings"])  # the service adds a note for PNG/JPEG
        assert set(answer["model"]) >= {"name", "version", "sha256", "backend"}
        # the same default backend as predict.py (int8 calibrated on the run's validation images) and its reason
        assert (answer["model"]["backend"], answer["model"]["inference"]) == (chosen["backend"], chosen["reason"])
        assert answer["preprocessing"]["image_size"] == 150
        batch_sizes.append(answer["batch_size"])
        assert SECRETS[0] not in response.text and SECRETS[1] not in response.text
    mono1 = next(a.json() for (p, _), a in zip(jobs, answers) if p.name == "mono1_12bit_window.dcm")
    assert mono1["input"]["photometric"].startswith("MONOCHROME1, inverted")
    import hashlib

    assert answers[0].json()["model"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert max(batch_sizes) > 1  # eight clients within a 2 s batching window share model calls
    metrics = httpx.get(service["url"] + "/metrics").text
    assert 'cxr_serve_batch_size_count{endpoint="/predict"}' in metrics
    assert 'cxr_serve_request_seconds_bucket{endpoint="/predict"' in metrics


def test_cam_overlays(service, inputs):
    url = service["url"] + "/cam"
    answer = post(url, inputs["png"], multipart=True).json()
    (output,) = answer["outputs"]
    overlay = Image.open(io.BytesIO(base64.b64decode(output["cam_png"])))
    assert overlay.size == (320, 320) and overlay.mode == "RGB"
    single = post(url, inputs["mono2_12bit_window_j2k"], params={"output": "finding"})
    assert single.status_code == 200 and single.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(single.content)).size == (320, 320)
    unknown = post(url, inputs["png"], params={"output": "Mass"})
    assert unknown.status_code == 404 and "finding" in unknown.json()["detail"]


BAD_UPLOADS = [  # (input, status, words of the one sentence)
    ("text", 415, "not a PNG, JPEG or DICOM image"),
    ("empty", 400, "empty"),
    ("cut_png", 422, "truncated"),
    ("truncated", 422, "cannot decode the pixel data"),
    ("multi_frame", 422, "multi-frame DICOM (3 frames)"),
    ("no_pixels", 422, "without pixel data"),
    ("mpeg2", 422, "transfer syntax MPEG2"),
    ("huge", 413, "6001 x 6001 pixels, more than the limit of 36,000,000"),  # cxr.data.dicom.MAX_INPUT_PIXELS
    ("large", 413, f"larger than the limit of {MAX_UPLOAD_MB} MiB"),
]


@pytest.mark.parametrize("name,status,words", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
@pytest.mark.parametrize("endpoint", ["/predict", "/cam"])
def test_bad_uploads_get_one_sentence(service, inputs, tmp_path, name, status, words, endpoint):
    if name == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not an image\n")
    elif name == "empty":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif name == "large":
        path = tmp_path / "large.dcm"
        path.write_bytes(b"\x00" * (MAX_UPLOAD_MB * 2**20 + 100_000))
    else:
        path = inputs[name]
    response = post(service["url"] + endpoint, path, multipart=name in ("cut_png", "multi_frame"))
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert words.lower() in detail.lower() and detail.endswith(".") and "\n" not in detail and detail[0].isupper()
    assert str(path) not in detail and "Traceback" not in detail


def test_no_patient_field_in_logs_and_no_upload_on_disk(service, inputs, tmp_path):
    """A DICOM with a patient's identity, and a 1.5 MB one (above Starlette's 1 MiB spooling threshold) sent as
    multipart: neither reaches a file of the service (its working directory, its TMPDIR) nor its log."""
    pixels = np.random.default_rng(0).integers(0, 4096, (768, 1024), dtype=np.uint16)
    large = save(dataset(pixels, 12), tmp_path / "large_random.dcm")
    assert 2**20 < large.stat().st_size < MAX_UPLOAD_MB * 2**20
    assert post(service["url"] + "/predict", inputs["invalid_values"]).status_code == 200
    assert post(service["url"] + "/predict", large, multipart=True).status_code == 200
    fingerprints = [large.read_bytes()[-4096:], *(secret.encode() for secret in SECRETS)]
    files = [p for p in service["home"].rglob("*") if p.is_file()]
    assert service["log"] in files and any(p.name == "serve.log" for p in files)
    for file in files:
        content = file.read_bytes()
        for fingerprint in fingerprints:
            assert fingerprint not in content, f"{fingerprint[:40]!r} in {file}"


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="apt-get install chromium chromium-driver (.ci/run)")
def test_web_page_in_headless_chromium(service, inputs, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[dev]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(service["url"] + "/")
        driver.find_element(By.ID, "file").send_keys(str(inputs["mono1_12bit_window"]))
        wait = WebDriverWait(driver, 120)
        row = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.finding"))[0]
        cam = wait.until(
            lambda d: [
                i
                for i in d.find_elements(By.CSS_SELECTOR, "img.cam")
                if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) == 320
            ]
        )[0]
        expected = post(service["url"] + "/predict", inputs["mono1_12bit_window"]).json()["outputs"][0]
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[:3] == ["finding", f"{expected['probability']:.3f}", f"{expected['threshold']:.3f}"]
        assert cells[3] == ("above threshold" if expected["decision"] else "below threshold")
        assert "finding" in cam.get_attribute("alt")
        assert "MONOCHROME1" in driver.find_element(By.ID, "model").text
        assert driver.find_element(By.ID, "status").text == "Done."
        driver.find_element(By.ID, "file").send_keys(str(inputs["multi_frame"]))  # a bad upload: its sentence
        wait.until(lambda d: "multi-frame dicom" in d.find_element(By.ID, "status").text.lower())
    finally:
        driver.quit()


def test_bench_serve_section_as_documented(tmp_path):
    """``python -m cxr.bench --only serve`` with a few requests: its own service, 0 errors, the rows it promises."""
    require_real_data()
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "cxr.bench", "--only", "serve", "--tiny", "--serve-requests", "6", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["measure"]: row for row in json.loads(out.read_text())["rows"]}
    for c in (1, 8, 32):
        row = rows[f"serve /predict, concurrency {c}"]
        assert row["met"] is True and row["fast"] > 0 and "0 errors and 0 retries of 6" in row["note"]
        level = row["details"]["levels"][str(c)]
        assert level["errors"] == level["retries"] == 0 and level["connections"] >= 1
    memory = rows["serve memory (PSS of its processes), after warm-up -> end"]
    assert memory["baseline"] > 0 and memory["details"]["exit_status"] == 0
    assert "concurrency 32" in done.stdout


def test_graceful_shutdown_answers_requests_in_flight(service, inputs):
    """SIGTERM while requests wait in the 2 s batching window: all are answered, then the service exits 0."""
    url, process = service["url"], service["process"]

    def in_flight() -> float:
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line.startswith('cxr_serve_requests_in_flight{endpoint="/predict"}'):
                return float(line.split()[-1])
        return 0.0

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(post, url + "/predict", inputs["png"]) for _ in range(6)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every request accepted (answered or in flight), one at least in flight
            waiting = in_flight()
            if waiting >= 1 and waiting + sum(f.done() for f in futures) >= 6:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert not all(f.done() for f in futures), "all answered before the shutdown: none was in flight"
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 6
    assert process.wait(90) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)
