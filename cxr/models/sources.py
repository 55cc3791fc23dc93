"""Named pretrained weight sources (``model.weights=xrv:densenet121-res224-all``, ``timm:<model>``,
``hf:microsoft/rad-dino``): the network each needs, the preprocessing its weights expect, where its files are
published, its output names and the datasets it was trained on (for the leakage flag).

The harmonised finding list is being written elsewhere (cxr/data/findings.py); until it lands, a source's output
names are matched to the task's findings by NIH's 14 names and torchxrayvision's, through ``ALIASES``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import ConfigError
from cxr.models.weights_cache import RemoteFile, cache_root, fetch

log = logging.getLogger(__name__)
KINDS = ("xrv", "timm", "hf")
_XRV_RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
# torchxrayvision's 18 outputs (xrv.models.model_urls[...]["labels"]); "" = an output that weight set did not train
_XRV_ALL = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum",
)  # fmt: skip


def _only(*names: str) -> tuple[str, ...]:
    return tuple(label if label in names else "" for label in _XRV_ALL)


_CHEX = _only(
    "Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia", "Cardiomegaly", "Lung Lesion",
    "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)  # fmt: skip
# name -> (published file, output names, training datasets). RSNA Pneumonia and SIIM-ACR images are NIH images.
XRV = {
    "densenet121-res224-all": (
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _XRV_ALL,
        ("nih", "padchest", "chexpert", "mimic_cxr", "google", "openi", "rsna"),
    ),
    "densenet121-res224-nih": (
        "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _XRV_ALL[:14] + ("",) * 4,
        ("nih",),
    ),
    "densenet121-res224-pc": (
        "pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _XRV_ALL[:14] + ("", "Fracture", "", ""),
        ("padchest",),
    ),
    "densenet121-res224-chex": ("chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _CHEX, ("chexpert",)),
    "densenet121-res224-rsna": (
        "kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _only("Pneumonia", "Lung Opacity"),
        ("rsna",),
    ),
    "densenet121-res224-mimic_nb": (
        "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _CHEX,
        ("mimic_cxr",),
    ),
    "densenet121-res224-mimic_ch": (
        "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _CHEX,
        ("mimic_cxr",),
    ),
    "resnet50-res512-all": (
        "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
        _XRV_ALL,
        ("padchest", "nih", "rsna", "siim", "vindr_cxr"),
    ),
}
# SHA-256 of the published files, pinned where known; None: not pinned, the first download logs its digest
XRV_SHA256: dict[str, str | None] = dict.fromkeys(XRV)
# datasets a user may name -> the image collections they hold (RSNA Pneumonia, SIIM-ACR and Google's NIH labels
# relabel NIH ChestX-ray14 images)
IMAGES_OF = {"nih": "nih", "chestx-ray14": "nih", "rsna": "nih", "siim": "nih", "google": "nih"}
HF_TRAINED_ON = {"microsoft/rad-dino": ("mimic_cxr", "chexpert", "nih", "padchest", "brax")}
HF_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
# names a source uses -> the task's finding names (NIH's spelling) where they differ
ALIASES = {"pleural thickening": "Pleural_Thickening", "pleural effusion": "Effusion"}


def xrv_preprocessing(size: int) -> dict:
    """torchxrayvision's input: one channel, ``size`` px, pixels scaled to [-1024, 1024] (xrv.utils.normalize:
    ``(2 x / 255 - 1) 1024`` = ``(x / 255 - 0.5) / (1 / 2048)``)."""
    return {
        "channels": 1,
        "image_size": size,
        "resample": "bilinear",
        "pixel_divisor": 255.0,
        "mean": 0.5,
        "std": 1 / 2048,
    }


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@dataclass(frozen=True)
class Source:
    """A named set of weights: kind (xrv, timm, hf), its name, the published files and the registry network."""

    kind: str
    name: str
    files: tuple[RemoteFile, ...]
    labels: tuple[str, ...] = ()
    trained_on: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def folder(self) -> Path:
        return cache_root() / self.kind / self.name.replace("/", "--")


def parse(weights) -> Source | None:
    """The named source ``model.weights`` spells, None for none / imagenet / a path; ConfigError for an unknown name."""
    text = str(weights or "")
    kind, sep, name = text.partition(":")
    if not sep or kind not in KINDS:
        return None
    if kind == "xrv":
        if name not in XRV:
            raise ConfigError(f"model.weights={text}: not a torchxrayvision weight set (one of {', '.join(XRV)})")
        file, labels, trained_on = XRV[name]
        return Source("xrv", name, (RemoteFile(_XRV_RELEASE + file, file, XRV_SHA256[name]),), labels, trained_on)
    if kind == "timm":
        import timm

        if name not in timm.list_models():
            raise ConfigError(f"model.weights={text}: {name!r} is not a timm model (timm.list_models() lists them)")
        config = timm.get_pretrained_cfg(name)
        hub = getattr(config, "hf_hub_id", None) if config else None
        files = (RemoteFile(f"https://huggingface.co/{hub}/resolve/main/model.safetensors", "model.safetensors"),)
        return Source("timm", name, files if hub else (), (), ("imagenet",))
    if name.count("/") != 1:
        raise ConfigError(f"model.weights={text}: a Hugging Face model is named <owner>/<name> (hf:microsoft/rad-dino)")
    files = tuple(RemoteFile(f"https://huggingface.co/{name}/resolve/main/{f}", f) for f in HF_FILES)
    return Source("hf", name, files, (), HF_TRAINED_ON.get(name, ()))


def locate(source: Source, weights_file=None) -> Path:
    """The local weights of ``source``: ``model.weights_file`` (a file, or a folder for hf), else the cache,
    downloaded on first use. An xrv DenseNet file converted by ``python -m cxr.models.convert`` is preferred."""
    key = f"model.weights={source.key}"
    if weights_file not in (None, "", "none", "null"):
        path = Path(str(weights_file)).expanduser()
        if not path.exists():
            raise ConfigError(f"model.weights_file={path}: no such file or folder (the local copy of {source.key})")
        return path
    if not source.files:
        raise ConfigError(f"{key}: no published file known to cxr; give model.weights_file=<its state dict>")
    if source.kind == "hf":
        for remote in source.files:
            fetch(remote, source.folder, key)
        return source.folder
    converted = source.folder / (Path(source.files[0].filename).stem + ".safetensors")
    return converted if converted.is_file() else fetch(source.files[0], source.folder, key)


def hf_preprocessing(folder: Path) -> dict:
    """The size and normalisation of a Hugging Face image processor (``preprocessor_config.json`` of the folder)."""
    path = Path(folder) / "preprocessor_config.json"
    try:
        config = json.loads(path.read_text())
        crop = config.get("crop_size") if config.get("do_center_crop", True) else None
        size = config.get("size") or {}
        side = (crop or {}).get("height") or size.get("shortest_edge") or size.get("height")
        resample = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box"}[config.get("resample", 3)]
        return {
            "channels": 3,
            "image_size": int(side),
            "resample": resample,
            "pixel_divisor": round(1 / float(config.get("rescale_factor", 1 / 255))),
            "mean": [float(v) for v in config["image_mean"]],
            "std": [float(v) for v in config["image_std"]],
        }
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not a readable image processor config ({type(error).__name__}: {error})") from None


def timm_preprocessing(name: str) -> dict:
    """The input size, interpolation and mean/std of timm's pretrained config of ``name`` (ImageNet's otherwise)."""
    import timm

    config = timm.get_pretrained_cfg(name)
    if config is None:
        return {"channels": 3, "image_size": 224, "resample": "bicubic", "pixel_divisor": 255.0, **IMAGENET}
    resample = config.interpolation if config.interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
    return {
        "channels": 3,
        "image_size": int(config.input_size[-1]),
        "resample": resample,
        "pixel_divisor": 255.0,
        "mean": [float(v) for v in config.mean],
        "std": [float(v) for v in config.std],
    }


def preprocessing(source: Source, weights_file=None) -> dict:
    """The preprocessing ``source``'s weights expect (an hf source reads its processor config, fetched if needed)."""
    if source.kind == "xrv":
        return xrv_preprocessing(512 if source.name.startswith("resnet50") else 224)
    if source.kind == "timm":
        return timm_preprocessing(source.name)
    return hf_preprocessing(locate(source, weights_file))


def network(source: Source, weights_file=None) -> dict:
    """The registry spec of the network ``source``'s weights fit (an hf source reads its config.json)."""
    if source.kind == "xrv":
        return {"name": f"xrv/{source.name.split('-')[0]}", "args": {}}
    if source.kind == "timm":
        return {"name": f"timm/{source.name}", "args": {}}
    folder = locate(source, weights_file)
    if Path(folder).is_file():
        raise ConfigError(f"model.weights_file={folder}: {source.key} needs a folder (config.json, model.safetensors)")
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{folder}/config.json: not readable ({type(error).__name__})") from None
    return {"name": f"hf/{config.get('model_type')}", "args": {"config": json.dumps(config, sort_keys=True)}}


def finding_name(label: str) -> str:
    """A source's output name in the task's spelling (NIH's)."""
    return ALIASES.get(label.lower().replace("_", " "), label)


def trained_on(weights, declared=()) -> tuple[str, ...]:
    """The datasets the initial weights were trained on: the table's, plus ``model.weights_trained_on``."""
    try:
        source = parse(weights)
    except ConfigError:
        source = None
    return tuple(dict.fromkeys((*(source.trained_on if source else ()), *(str(d).lower() for d in declared or ()))))


def leakage(weights, dataset: str, declared=()) -> dict | None:
    """The leakage note when the initial weights were trained on the images of ``dataset`` (None otherwise)."""
    seen = trained_on(weights, declared)
    images = IMAGES_OF.get(str(dataset).lower(), str(dataset).lower())
    overlap = [d for d in seen if IMAGES_OF.get(d, d) == images]
    if not overlap:
        return None
    return {
        "weights": str(weights),
        "trained_on": list(seen),
        "overlap": overlap,
        "warning": (
            f"the initial weights {weights} were trained on {', '.join(overlap)} images, which include the images "
            f"of {dataset} evaluated here (torchxrayvision split them at random, not by patient and not by NIH's "
            "official test list): test metrics are optimistic, not an independent evaluation"
        ),
    }


def apply_to_config(cfg) -> Source | None:
    """For a named source in ``cfg.model.weights``: its network into ``cfg.model.net`` and the preprocessing its
    weights expect into ``cfg.program.preprocessing`` (which the data and the checkpoint read)."""
    from omegaconf import open_dict

    source = parse(cfg.model.get("weights"))
    if source is None:
        return None
    weights_file = cfg.model.get("weights_file")
    located = locate(source, weights_file)  # offline or refused: one line before any data is read
    if source.kind == "xrv":
        from cxr.models.weights_file import read_weights, xrv_weights_path

        read_weights(xrv_weights_path(located), f"model.weights={source.key}")  # a pickled model: refused now
    expected = preprocessing(source, weights_file)
    with open_dict(cfg):
        cfg.model.net = network(source, weights_file)
        cfg.program.preprocessing = {**cfg.program.preprocessing, **expected}
    log.info("model.weights=%s: network %s, preprocessing %s", source.key, cfg.model.net.name, expected)
    return source


def summary(weights, weights_file, preprocessing_used: dict, dataset: str, declared=(), head_mapping=None) -> dict:
    """What metrics.json and the model card say of the initial weights: source, file, the datasets they were trained
    on, the preprocessing applied, head rows started from the source's outputs, and the leakage flag."""
    source = parse(weights)
    return {
        "weights": str(weights) if weights else None,
        "weights_file": str(weights_file) if weights_file else None,
        "named_source": source.key if source else None,
        "trained_on": list(trained_on(weights, declared)),
        "preprocessing": preprocessing_used,
        "head_rows_from_source": dict(head_mapping or {}),
        "leakage": leakage(weights, dataset, declared),
    }


def card_lines(pretrained: dict | None) -> list[str]:
    """The model card's lines on the initial weights (a bold warning when they saw the evaluated images)."""
    if not pretrained or not pretrained.get("weights"):
        return []
    lines = [
        f"- Initial weights: `{pretrained['weights']}`"
        + (f" (file `{pretrained['weights_file']}`)" if pretrained.get("weights_file") else "")
        + (f", trained on {', '.join(pretrained['trained_on'])}" if pretrained.get("trained_on") else "")
        + (f"; preprocessing they expect: `{pretrained['preprocessing']}`" if pretrained.get("named_source") else "")
        + "."
    ]
    if pretrained.get("head_rows_from_source"):
        lines.append(
            f"- Head rows started from the source's outputs: {', '.join(pretrained['head_rows_from_source'])}."
        )
    if pretrained.get("leakage"):
        lines.append(f"- **Leakage: {pretrained['leakage']['warning']}.**")
    return lines
