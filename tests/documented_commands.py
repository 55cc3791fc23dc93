"""The commands of README.md and docs/*.md, read as docs/development-commands.md ("Documented commands") says:
fenced ``bash`` blocks, one command per line, placeholders from a fixed vocabulary, ``<!-- ci: ... -->`` markers."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

PLACEHOLDERS = ("run", "ckpt", "multirun", "nih", "images", "dicom", "onnx", "killed")
PLACEHOLDER = re.compile(r"<([A-Za-z_][\w.-]*|\.\.\.|…)>")
MARKER = re.compile(r"<!--\s*ci:\s*(compose|skip)\b\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
# entry points whose runs train: debug=fdr is appended (and a search runs hydra.sweeper.n_trials=2)
TRAINING_PROGRAMS = ("train.py", "cxr-train")
# entry point -> the Hydra config it composes (what a compose block builds)
CONFIG_OF = {
    "train.py": "train",
    "cxr-train": "train",
    "cxr.check": "train",
    "cxr-check": "train",
    "cxr.prepare": "train",
    "evaluate.py": "evaluate",
    "cxr-evaluate": "evaluate",
    "predict.py": "predict",
    "cxr-predict": "predict",
    "export.py": "export",
    "cxr-export": "export",
}


@dataclass
class Command:
    """One documented command as the test runs it."""

    source: str  # file:line
    text: str  # the segments to run (after dropping set-up segments), comment removed
    argv: list[str]  # the last segment, split as the shell splits it
    exports: list[str] = field(default_factory=list)  # the block's `export ...` lines before it

    @property
    def placeholders(self) -> set[str]:
        return set(PLACEHOLDER.findall(" ".join([*self.exports, self.text])))

    @property
    def entry_point(self) -> str | None:
        """train.py, cxr.check, cxr-train …: the script or module the command runs (None: another program)."""
        args = self.argv
        if args and Path(args[0]).name in ("python", "python3"):
            args = args[1:]
            if args[:1] == ["-m"] and len(args) > 1:
                return args[1]
            return Path(args[0]).name if args else None
        return Path(args[0]).name if args else None

    @property
    def arguments(self) -> list[str]:
        """What follows the script or module."""
        args = self.argv
        if args and Path(args[0]).name in ("python", "python3"):
            args = args[1:]
            return args[2:] if args[:1] == ["-m"] else args[1:]
        return args[1:]

    @property
    def trains(self) -> bool:
        return self.entry_point in TRAINING_PROGRAMS

    @property
    def multirun(self) -> bool:
        return "-m" in self.arguments or "--multirun" in self.arguments


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    mode: str  # run, compose or skip
    reason: str
    commands: list[Command]

    @property
    def source(self) -> str:
        return f"{self.path.name}:{self.line}"


def strip_comment(line: str) -> str:
    """The line without its shell comment: `#` at the start of a word, outside quotes (as bash reads it)."""
    quote, escaped = None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def split_and(line: str) -> list[str]:
    """The segments of a `&&` chain (outside quotes)."""
    segments, quote, start, i = [], None, 0, 0
    while i < len(line):
        char = line[i]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif line.startswith("&&", i):
            segments.append(line[start:i].strip())
            start = i + 2
            i += 1
        i += 1
    segments.append(line[start:].strip())
    return [s for s in segments if s]


def is_setup(segment: str) -> bool:
    """Creating or activating a virtualenv, `pip install`, `python -m pytest`: not run (the test runs in the
    installed environment, and is itself run by pytest)."""
    words = shlex.split(segment)
    if words and Path(words[0]).name in ("python", "python3"):
        words = words[1:]
        if words[:1] == ["-m"]:
            words = words[1:]
    return bool(words) and (
        words[0] in (".", "source", "venv", "pytest", "virtualenv")
        or words[:2] == ["pip", "install"]
        or Path(words[0]).name == "pip"
        and words[1:2] == ["install"]
    )


def block_commands(lines: list[tuple[int, str]], source: Path) -> list[Command]:
    """The commands of a bash block's lines (number, text)."""
    commands, exports, pending, start = [], [], "", None
    for number, raw in lines:
        if start is None:
            start = number
        if raw.rstrip().endswith("\\"):  # a trailing backslash continues the line
            pending += raw.rstrip()[:-1] + " "
            continue
        line, pending = strip_comment(pending + raw).strip(), ""
        first, start = start, None
        if not line:
            continue
        if line.startswith("export "):
            exports.append(line)
            continue
        segments = [s for s in split_and(line) if not is_setup(s)]
        if not segments:
            continue
        commands.append(
            Command(
                source=f"{source.name}:{first}",
                text=" && ".join(segments),
                argv=shlex.split(segments[-1]),
                exports=list(exports),
            )
        )
    return commands


def documented_blocks(paths: list[Path]) -> list[Block]:
    """Every fenced ``bash`` block of ``paths``, with the ``<!-- ci: ... -->`` marker on the line before it."""
    blocks = []
    for path in paths:
        text = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(text):
            fence = FENCE.match(text[i])
            if not fence:
                i += 1
                continue
            indent, marks, info = fence.groups()
            end = i + 1
            while end < len(text) and not text[end].strip().startswith(marks):
                end += 1
            if info == "bash":
                previous = next((text[j] for j in range(i - 1, -1, -1) if text[j].strip()), "")
                marker = MARKER.search(previous)
                mode, reason = (marker.group(1), marker.group(2)) if marker else ("run", "")
                lines = [
                    (n + 1, text[n][len(indent) :] if text[n].startswith(indent) else text[n].lstrip())
                    for n in range(i + 1, end)
                ]
                blocks.append(Block(path, i + 1, mode, reason, block_commands(lines, path)))
            i = end + 1
    return blocks


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with every placeholder replaced by its (shell-quoted where needed) value."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
