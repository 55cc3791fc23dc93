"""The dataset registry: each public chest X-ray release read as its publisher distributes it, into one frame per
image on the harmonised findings (cxr.data.findings).

A reader is ``read(root: Path, options: Mapping) -> pandas.DataFrame`` (pure, no torch): ``root`` is the unpacked
release, ``options`` the ``data`` config's reader settings (``labels``: a label-file override; ``blank``, ...).
Its columns are listed in ``cxr.data.datasets.common.COLUMNS``; uncertain labels stay -1 (the common code applies
``data.uncertain``).

We read the files ourselves rather than through torchxrayvision's dataset classes (measured on CheXpert's
223,414-row train.csv: ``xrv.datasets.CheX_Dataset`` needs the images' folder and loads them as its own tensors,
keeps only the first image per patient and PA views by default, and turns -1 into NaN, so the uncertain policy and
the patient split could not be applied after it); its label maps are still the reference each reader's map is
tested against (tests/test_harmonised_findings.py).
"""

from __future__ import annotations

from cxr.data.datasets import chexpert, mimic_cxr, nih, openi, padchest, rsna_pneumonia, vindr_cxr

READERS = {
    "nih": nih.read,
    "chexpert": chexpert.read,
    "mimic_cxr": mimic_cxr.read,
    "padchest": padchest.read,
    "vindr_cxr": vindr_cxr.read,
    "rsna_pneumonia": rsna_pneumonia.read,
    "openi": openi.read,
}
