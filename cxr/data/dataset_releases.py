"""What each public release beyond NIH is distributed as: its archives, what they hold and the counts its publisher
gives, for :mod:`cxr.data.dataset_download`.

Counts are the publishers' (and the readers' tests check them on the real label files): CheXpert v1.0 223,414
training + 234 validation images (Irvin et al., AAAI 2019); MIMIC-CXR-JPG 377,110 images (Johnson et al., PhysioNet);
PadChest 160,861 labelled rows (the released CSV; Bustos et al., 2020); VinDr-CXR 15,000 training + 3,000 test
images (Nguyen et al., Scientific Data 2022); RSNA Pneumonia 26,684 training images (+3,000 unlabelled stage 2 test
images, Shih et al., Radiology: AI 2019); Open-i 3,955 reports, 7,470 images (Demner-Fushman et al., JAMIA 2016).
Checksums: only PhysioNet publishes them (``SHA256SUMS.txt`` inside each release); Open-i, Stanford AIMI, BIMCV and
Kaggle publish none, so for those what is verified is the archives' own integrity (zip CRC, gzip CRC) and counts.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

OPENI_URL = "https://openi.nlm.nih.gov/imgs/collections/"


@dataclass(frozen=True)
class Archive:
    """One archive (or plain file) of a release. ``files``: how many ``kind`` files it holds as published (None:
    not published; counted and reported). ``into``: the folder under the root that its members go into when they
    are not already inside it (PadChest's ``N.zip`` -> ``N/``; ``{n}`` is the number in the name)."""

    pattern: str
    kind: str
    files: int | None = None
    url: str = ""
    md5: str = ""
    into: str = ""
    plain: bool = False  # a plain file, copied as it is (PadChest's labels CSV)

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern.replace("{n}", "[0-9]*")) and (
            "{n}" not in self.pattern or name.split(".", 1)[0].isdigit()
        )

    def folder(self, name: str) -> str:
        return self.into.replace("{n}", name.split(".", 1)[0])


@dataclass(frozen=True)
class Release:
    """A release: its archives (``one_of``: alternatives, e.g. CheXpert's small or full zip, else every one is
    needed), the image count its label files list, where it is obtained, and the checksum list it carries."""

    name: str
    title: str
    source: str
    archives: tuple[Archive, ...]
    images: int
    one_of: bool = False
    checksums: str = ""  # a sha256sum-format list inside the release (PhysioNet's SHA256SUMS.txt)
    marker: str = ""  # a file at the top of the unpacked release: where its root is
    url: bool = False  # openly downloadable (python -m cxr.download NAME fetches it)

    def describe(self) -> str:
        names = (" or " if self.one_of else " and ").join(a.pattern.replace("{n}", "N") for a in self.archives)
        return f"{names} (from {self.source})"


RELEASES = {
    r.name: r
    for r in (
        Release(
            "openi",
            "Open-i (Indiana University)",
            "openi.nlm.nih.gov, open access",
            (
                Archive("NLMCXR_png.tgz", ".png", 7_470, OPENI_URL + "NLMCXR_png.tgz"),
                Archive("NLMCXR_reports.tgz", ".xml", 3_955, OPENI_URL + "NLMCXR_reports.tgz"),
                # the DICOM headers give the views; their count is not published (torchxrayvision's table of
                # those headers has 7,469 rows), so it is counted and reported
                Archive("NLMCXR_dcm.tgz", ".dcm", None, OPENI_URL + "NLMCXR_dcm.tgz"),
            ),
            images=7_470,
            url=True,
        ),
        Release(
            "chexpert",
            "CheXpert v1.0",
            "Stanford AIMI, after registration",
            (Archive("CheXpert-v1.0-small.zip", ".jpg", 223_648), Archive("CheXpert-v1.0.zip", ".jpg", 223_648)),
            images=223_648,
            one_of=True,
            marker="valid.csv",
        ),
        Release(
            "mimic_cxr",
            "MIMIC-CXR-JPG 2.x",
            "PhysioNet, credentialed access: its 'Download the ZIP file' or the wget -r tree",
            (Archive("mimic-cxr-jpg*.zip", ".jpg", 377_110),),
            images=377_110,
            checksums="SHA256SUMS.txt",
            marker="mimic-cxr-2.0.0-metadata.csv.gz",
        ),
        Release(
            "padchest",
            "PadChest",
            "BIMCV, after a request form",
            (
                Archive("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", ".csv.gz", plain=True),
                Archive("{n}.zip", ".png", None, into="{n}"),  # per folder: as many as the labels CSV places there
            ),
            images=160_861,
            marker="PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
        ),
        Release(
            "vindr_cxr",
            "VinDr-CXR 1.0.0",
            "PhysioNet, credentialed access: its 'Download the ZIP file' or the wget -r tree",
            (Archive("vindr-cxr*.zip", ".dicom", 18_000),),
            images=18_000,
            checksums="SHA256SUMS.txt",
            marker="annotations/image_labels_train.csv",
        ),
        Release(
            "rsna_pneumonia",
            "RSNA Pneumonia Detection Challenge",
            "Kaggle, after accepting the competition rules",
            (Archive("rsna-pneumonia-detection-challenge.zip", ".dcm", 26_684 + 3_000),),
            images=26_684,
            marker="stage_2_train_labels.csv",
        ),
    )
}
