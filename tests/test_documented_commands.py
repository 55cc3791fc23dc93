"""Every command of README.md and docs/*.md runs as written (docs/development-commands.md, "Documented commands"):
each line of a ``bash`` block in a subprocess, in one temporary working directory (a user following the docs),
with ``python`` meaning this interpreter and ``debug=fdr`` appended where it trains; ``<!-- ci: compose -->``
blocks are composed and their objects built on the CPU without training."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.config_builds import build_command
from tests.conftest import NIH_META, NIH_SAMPLE, REPO, SHARED_DATA, require_real_data
from tests.documented_commands import CONFIG_OF, PLACEHOLDERS, Block, Command, documented_blocks, fill

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
BLOCKS = documented_blocks([path for path in DOCS if path.is_file()])
SCRIPTS = ("train.py", "evaluate.py", "compare.py", "predict.py", "export.py")
TIMEOUT_S = 1200


def _ids(blocks: list[Block]) -> list[str]:
    return [f"{b.source}-{b.mode}" for b in blocks]


# ------------------------------------------------------------------------------------------- static checks
def test_documented_commands_use_known_placeholders_and_programs():
    """Fast: every line names only the fixed placeholders and an entry point the test knows how to run."""
    assert BLOCKS, "no bash blocks found in README.md / docs/"
    problems = []
    for block in BLOCKS:
        for command in block.commands:
            unknown = command.placeholders - set(PLACEHOLDERS)
            if unknown:
                problems.append(
                    f"{command.source}: unknown placeholder(s) {sorted(unknown)} (use "
                    f"{', '.join(f'<{p}>' for p in PLACEHOLDERS)})"
                )
            if block.mode == "compose" and command.entry_point not in CONFIG_OF:
                problems.append(
                    f"{command.source}: a compose block holds only entry points with a config ({command.text})"
                )
        if block.mode == "skip" and not block.reason:
            problems.append(f"{block.source}: <!-- ci: skip REASON --> needs its reason")
    assert not problems, "\n".join(problems)


def test_the_parser_reads_lines_as_the_convention_says(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "\n".join(
            [
                "```bash",
                "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python train.py",
                "export CXR_NIH_ROOT=<nih>",
                "python train.py data=nih \\",
                "  program=C   # a comment",
                "python -m pytest -q",
                "python predict.py ckpt_path=<ckpt> 'inputs=\"<images>/*.png\"' # glob",
                "```",
                "",
                "<!-- ci: compose -->",
                "",
                "```bash",
                "python train.py -m trainer=ddp program=C,D",
                "```",
                "```text",
                "python not.py",
                "```",
            ]
        )
    )
    run, compose = documented_blocks([page])
    assert [c.text for c in run.commands] == [
        "python train.py",
        "python train.py data=nih    program=C",
        "python predict.py ckpt_path=<ckpt> 'inputs=\"<images>/*.png\"'",
    ]
    assert run.commands[1].exports == ["export CXR_NIH_ROOT=<nih>"] and run.commands[0].exports == []
    assert run.commands[1].trains and not run.commands[2].trains
    assert run.commands[2].placeholders == {"ckpt", "images", "nih"} and run.commands[2].entry_point == "predict.py"
    assert compose.mode == "compose" and compose.commands[0].multirun
    assert compose.commands[0].arguments == ["-m", "trainer=ddp", "program=C,D"]


# ----------------------------------------------------------------------------------------- the environment
class Workspace:
    """The user's working directory (temporary), with the checkout's scripts beside it as in a checkout, the NIH
    sample at ``../shared/data`` when there is one, and the placeholders' values, each made when first needed."""

    def __init__(self, root: Path):
        self.root = root
        self.cwd = root / "checkout"
        self.cwd.mkdir(parents=True)
        for script in SCRIPTS:
            (self.cwd / script).symlink_to(REPO / script)
        if SHARED_DATA.exists():  # the experiment=*_nih_sample presets read ../shared/data (beside the checkout)
            (root / "shared").mkdir()
            (root / "shared" / "data").symlink_to(SHARED_DATA)
        bin_dir = root / "bin"  # `python` and `python3` mean this interpreter (with its environment)
        bin_dir.mkdir()
        for name in ("python", "python3"):
            wrapper = bin_dir / name
            wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
        }
        for key in ("HYDRA_FULL_ERROR", "CXR_NIH_ROOT", "CXR_NIH_LABELS"):
            self.env.pop(key, None)
        self.values: dict[str, str] = {}

    def run(self, text: str, source: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["bash", "-c", text], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
        assert result.returncode == 0, (
            f"{source}: `{text}` exited {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
        return result

    def value(self, name: str) -> str:
        if name not in self.values:
            self.values[name] = str(getattr(self, f"_make_{name}")())
            assert re.fullmatch(r"[\w/.\-]+", self.values[name]), self.values[name]  # needs no shell quoting
        return self.values[name]

    def _new_run(self, outputs: str, command: str) -> Path:
        before = set((self.cwd / outputs).glob("*"))
        self.run(command, f"<{outputs}>")
        made = sorted(set((self.cwd / outputs).glob("*")) - before)
        assert len(made) == 1, made
        return made[0]

    def _make_run(self) -> Path:
        # one short epoch with checkpoints (debug=fdr saves none): what <run> and <ckpt> stand for
        return self._new_run("outputs/train/runs", "python train.py debug=limit trainer.max_epochs=1")

    def _make_killed(self) -> Path:
        """A run killed (SIGKILL, as a crash or an out-of-memory kill) once its first epoch's last.ckpt exists."""
        runs = self.cwd / "outputs/train/runs"
        before = set(runs.glob("*"))
        process = subprocess.Popen(
            [sys.executable, "train.py", "debug=limit", "trainer.max_epochs=50"],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + TIMEOUT_S
        made: list[Path] = []
        while time.monotonic() < deadline and process.poll() is None:
            made = sorted(set(runs.glob("*")) - before)
            if made and (made[0] / "checkpoints" / "last.ckpt").is_file():
                break
            time.sleep(0.2)
        process.kill()
        process.wait()
        assert made and (made[0] / "checkpoints" / "last.ckpt").is_file() and not (made[0] / "metrics.json").exists()
        return made[0]

    def _make_ckpt(self) -> Path:
        checkpoints = Path(self.value("run")) / "checkpoints"
        return next(iter(sorted(checkpoints.glob("best*.ckpt")) or sorted(checkpoints.glob("*.ckpt"))))

    def _make_multirun(self) -> Path:
        return self._new_run("outputs/train/multiruns", "python train.py -m program=A,B debug=fdr")

    def _make_onnx(self) -> Path:
        run = self._new_run("outputs/export/runs", f"python export.py ckpt_path={self.value('ckpt')}")
        return next(run.glob("*.onnx"))

    def _make_images(self) -> Path:
        folder = self.root / "images"
        folder.mkdir()
        source = NIH_SAMPLE / "images" if NIH_SAMPLE.is_dir() else None
        pngs = sorted(source.glob("*.png"))[:4] if source else []
        if not pngs:  # no real sample: the demo images this workspace generated
            Path(self.value("run"))
            pngs = sorted((self.cwd / "data" / "demo").glob("images_*/images/*.png"))[:4]
        for png in pngs:
            shutil.copy(png, folder / png.name)
        return folder

    def _make_dicom(self) -> Path:
        import numpy as np
        from PIL import Image

        from tests.dicom_fixtures import dataset, save

        png = sorted(Path(self.value("images")).glob("*.png"))[0]
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("L"))
        return save(dataset(pixels, 8), self.root / "scan.dcm")

    def _make_nih(self) -> Path:
        """The NIH release layout (images/, Data_Entry_2017_v2020.csv, the official split lists) over the sample."""
        require_real_data(NIH_SAMPLE)
        folder = self.root / "nih"
        folder.mkdir()
        (folder / "images").symlink_to(NIH_SAMPLE / "images")
        shutil.copy(NIH_SAMPLE / "labels.csv", folder / "Data_Entry_2017_v2020.csv")
        for name in ("test_list.txt", "train_val_list.txt"):
            shutil.copy(NIH_META / name, folder / name)
        return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("documented"))


def as_run(command: Command) -> str:
    """The line as the test runs it: ``debug=fdr`` appended where it trains (a search: two trials)."""
    text = command.text
    if command.trains and not any(a.startswith("resume=") for a in command.arguments):  # resume: the run's own
        if not any(a.startswith(("debug=", "+debug=")) for a in command.arguments):
            text += " debug=fdr"
        if any(a.startswith("hparams_search=") for a in command.arguments) and not any(
            a.startswith("hydra.sweeper.n_trials=") for a in command.arguments
        ):
            text += " hydra.sweeper.n_trials=2"
    return text


# ---------------------------------------------------------------------------------------------- the blocks
RUN_BLOCKS = [b for b in BLOCKS if b.mode == "run" and b.commands]
COMPOSE_BLOCKS = [b for b in BLOCKS if b.mode == "compose"]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=_ids(RUN_BLOCKS))
def test_documented_block_runs(block: Block, workspace: Workspace):
    for command in block.commands:
        names = command.placeholders
        if "nih" in names or re.search(r"experiment=\S*nih_sample", command.text):
            require_real_data(NIH_SAMPLE)
        values = {name: workspace.value(name) for name in sorted(names)}
        exports = [fill(line, values) for line in command.exports]
        workspace.run("\n".join([*exports, fill(as_run(command), values)]), command.source)


@pytest.mark.slow
@pytest.mark.parametrize("block", COMPOSE_BLOCKS, ids=_ids(COMPOSE_BLOCKS))
def test_documented_block_builds(block: Block, tmp_path, monkeypatch):
    """GPU, SLURM, the full release: composed from a temporary working directory and built on the CPU."""
    monkeypatch.chdir(tmp_path)
    for command in block.commands:
        values = {name: str(tmp_path / name) for name in PLACEHOLDERS}  # nothing is read from them
        for line in command.exports:
            for assignment in fill(line, values).split()[1:]:
                key, _, value = assignment.partition("=")
                monkeypatch.setenv(key, value)
        arguments = [fill(a, values) for a in command.arguments]
        overrides = [a for a in arguments if not a.startswith("-")]  # -m, --multirun; a module's own --flags
        built = build_command(
            CONFIG_OF[command.entry_point], overrides, multirun=command.multirun, output_dir=tmp_path / "run"
        )
        assert built.jobs, command.source
