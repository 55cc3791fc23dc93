"""LightningDataModule: the data step's result (cxr.data.table: labelled table, split, leakage judged) -> datasets
-> streaming DataLoaders."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from cxr.data.dataset import ChestXrayDataset, Preprocessing, augmentation_transform, collate_batch
from cxr.data.leakage import LeakageError
from cxr.data.splits import SPLITS, summarise_split
from cxr.data.table import LabelledData, labelled_data

log = logging.getLogger(__name__)


class ChestXrayDataModule(L.LightningDataModule):
    """NIH ChestX-ray14 (or any set in its label layout) for the thesis' binary No Finding / finding task."""

    def __init__(
        self,
        labels: str,
        root: str,
        split: dict,
        preprocessing: dict,
        batch_size: int = 10,
        num_workers: int = 0,
        missing: str = "error",
        external: dict | None = None,
        demo: dict | None = None,
        pin_memory: bool = False,
        name: str = "data",
        augmentation: dict | None = None,
        cache: bool = False,
        cache_dir: str | None = None,
        format: str = "png",
        shards_dir: str | None = None,
        task: str = "binary",
        findings: list[str] | None = None,
        exclude: str | None = None,
        allow_overlap: dict | None = None,
        persistent_workers: bool = True,
        missing_patient_id: str = "refuse",
        views: list[str] | None = None,
        uncertain: str = "ignore",
        options: dict | None = None,
        sources: list[str] | None = None,
        releases: dict | None = None,
        externals: dict | None = None,
    ):
        super().__init__()
        # registered datasets (cxr.data.registered: data=chexpert, mimic_cxr, merged, ...): data.views, data.uncertain,
        # data.options (the reader's settings); data=merged: data.sources, each read from data.releases.<name>
        self.views, self.uncertain, self.options = views, uncertain, dict(options or {})
        self.sources, self.releases = list(sources or []), dict(releases or {})
        self.task = task
        self.externals = dict(externals or {})  # data.externals: external test sets by dataset (`external` group)
        self.missing_patient_id = missing_patient_id  # data.missing_patient_id: see cxr.data.patient_ids
        self.persistent_workers = bool(persistent_workers)  # train/val workers kept between epochs
        self.exclude = exclude  # data.exclude: hold the external set (images or patients) out of the labelled table
        self.allow_overlap = dict(allow_overlap or {})  # data.allow_overlap: see cxr.data.leakage
        # task=multilabel: targets are the multi-hot columns of ``findings``; binary: the table's ``target``
        self.target_columns = [str(f) for f in findings] if task == "multilabel" else None
        if self.target_columns is not None:
            from cxr.data.findings import HARMONISED as FINDINGS

            unknown = [f for f in self.target_columns if f not in FINDINGS]
            if unknown or not self.target_columns:
                raise ValueError(
                    f"task.findings: unknown finding(s) {unknown or '(none given)'}; known: {', '.join(FINDINGS)}"
                )
        self.cache, self.cache_dir = bool(cache), cache_dir  # data.cache: see cxr.data.cache
        if format not in ("png", "shards"):
            raise ValueError(f"data.format={format!r}: choose png or shards")
        self.format, self.shards_dir = format, shards_dir  # data.format=shards: see cxr.data.shards
        self.labels, self.root, self.name = labels, root, name
        self.split_settings = dict(split)
        self.preprocessing = Preprocessing(**preprocessing)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.missing = missing
        self.external = dict(external or {})
        self.demo = dict(demo) if demo else None
        self.augmentation = dict(augmentation) if augmentation else None
        self._demo_ready = False
        self.table: pd.DataFrame | None = None
        self.dropped = pd.DataFrame()
        self.external_table: pd.DataFrame | None = None
        self.leakage: dict = {}
        self._data: LabelledData | None = None
        self.datasets: dict[str, ChestXrayDataset] = {}

    def prepare_data(self) -> None:
        if self.demo is not None and not self._demo_ready:
            self._demo_ready = True
            from cxr.data.demo import ensure_demo_dataset

            ensure_demo_dataset(self.root, **self.demo)
            log.warning(
                "data=demo: SYNTHETIC images, not X-rays. Use real data with data=nih data.root=... "
                "data.labels=... (see README)"
            )

    def labelled_data(self) -> LabelledData:
        """The data step's result (labelled tables, split, leakage), made once and shared with the data check."""
        from cxr.data.registered import is_registered

        if self._data is None and is_registered(self.name):
            self._data = self._registered_data()
        if self._data is None:
            self._data = labelled_data(
                self.labels,
                self.root,
                self.split_settings,
                self.external,
                self.exclude,
                self.missing,
                self.allow_overlap,
                self.missing_patient_id,
            )
        if self.externals and not any(k.startswith("external_") for k in self._data.sets):
            from cxr.data.registered import external_sets

            self._data.sets.update(external_sets(self.externals, self.task))
        return self._data

    def _registered_data(self) -> LabelledData:
        from cxr.data.registered import from_settings

        settings = {key: getattr(self, key) for key in ("name", "root", "labels", "views", "uncertain", "options")}
        settings.update(split=self.split_settings, external=self.external, exclude=self.exclude, missing=self.missing)
        settings.update(allow_overlap=self.allow_overlap, missing_patient_id=self.missing_patient_id)
        return from_settings({**settings, "sources": self.sources, "releases": self.releases}, self.task)

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        data = self.labelled_data()
        main = data.main
        table, self.dropped = main.usable(self.missing), main.missing
        if table.empty:
            raise ValueError(f"no labelled image of {self.labels} was found under {self.root}")
        method = self.split_settings.get("method")
        table["split"] = data.split()
        external = data.external.usable(data.external_missing) if data.external is not None else None
        record, refusal = data.leakage()
        if refusal:
            raise LeakageError(refusal)
        excluded = main.excluded
        self.leakage = {
            "exclude": self.exclude,
            "excluded_images": None if excluded is None else len(excluded),
            "excluded_patients": None if excluded is None else int(excluded["patient_id"].nunique()),
            **record,
        }
        if self.missing_patient_id != "refuse":
            from cxr.data.patient_ids import count_per_image

            self.leakage["missing_patient_id"] = {
                "policy": self.missing_patient_id,
                "images": sum(count_per_image(t) for t in (table, external) if t is not None),
            }
        self.table = table
        self.summary = summarise_split(table, table["split"])
        log.info(
            "split=%s: %s",
            method,
            ", ".join(
                f"{s} {self.summary[s]['images']} images / {self.summary[s]['patients']} patients" for s in SPLITS
            ),
        )
        log.info("patients in more than one split: %s", self.summary["patients_in_several_splits"])
        source = self._open_cache(table)  # None without data.cache
        for name in SPLITS:
            transform = augmentation_transform(**self.augmentation) if name == "train" and self.augmentation else None
            in_split = (table["split"] == name).to_numpy()
            rows = np.flatnonzero(in_split) if source is not None else None  # this split's rows of the cache
            self.datasets[name] = ChestXrayDataset(
                table[in_split].reset_index(drop=True),
                self.preprocessing,
                transform,
                source=source,
                source_rows=rows,
                target_columns=self.target_columns,
            )
        self.source_tables = self._per_source_test(table)
        for name, labelled in data.sets.items():  # data.externals: external_<dataset>
            if name.startswith("external_"):
                self.source_tables[name] = labelled.usable(self.missing)
        for name, rows in self.source_tables.items():
            self.datasets[name] = ChestXrayDataset(rows, self.preprocessing, target_columns=self.target_columns)
        if external is not None:
            self.external_table = external
            self.datasets["external"] = ChestXrayDataset(
                external, self.preprocessing, source=self._open_cache(external), target_columns=self.target_columns
            )
        if self.format == "shards":
            self._read_shards()

    def _read_shards(self) -> None:
        """data.format=shards: each split's images from LitData shards written once from the cache (the training
        split streamed, shuffled per epoch and split across ranks and workers; the others in table order)."""
        from cxr.data.cache import CacheSpec
        from cxr.data.shards import ChestXrayShards, IndexedShards, open_or_write_shards

        if not self.shards_dir:
            raise ValueError("data.format=shards needs data.shards_dir")
        spec = CacheSpec.of(self.preprocessing)
        for name, dataset in list(self.datasets.items()):
            folder = open_or_write_shards(
                self.shards_dir,
                name,
                self.rows(name),
                dataset.source,
                dataset.source_rows,
                spec,
                target_columns=self.target_columns,
            )
            if name == "train":
                seed = int(torch.initial_seed() % 2**31)  # the run's seed (seed_everything) drives the epoch order
                self.datasets[name] = ChestXrayShards(folder, self.preprocessing, dataset.transform, seed=seed)
            else:
                self.datasets[name] = IndexedShards(folder, self.preprocessing, dataset.transform)

    def _open_cache(self, table: pd.DataFrame):
        """data.cache=true: the pre-decoded images of ``table``'s paths (built once, reused while valid)."""
        if not self.cache and self.format != "shards":  # shards are written from the cache
            return None
        if not self.cache_dir:
            raise ValueError("data.cache=true needs data.cache_dir")
        from cxr.data.cache_build import open_or_build

        return open_or_build(table["path"].tolist(), self.preprocessing, self.cache_dir)

    def _per_source_test(self, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """data=merged: the test split of each source (``test_<source>``), scored on its own as well."""
        if "dataset" not in table or table["dataset"].nunique() < 2:
            return {}
        test = table[table["split"] == "test"]
        return {f"test_{s}": rows.reset_index(drop=True) for s, rows in test.groupby("dataset", sort=False)}

    def rows(self, name: str) -> pd.DataFrame:
        """The label rows behind the dataset ``name`` (train, val, test, test_<source>, external), in loader order."""
        if name in getattr(self, "source_tables", {}):
            return self.source_tables[name]
        if name == "external":
            return self.external_table
        return self.table[self.table["split"] == name].reset_index(drop=True)

    def targets(self, name: str) -> torch.Tensor:
        """The float32 targets of split ``name`` from its label rows (whatever the image format): ``target`` (N,)
        or the findings' multi-hot (N, K)."""
        rows = self.rows(name)
        values = rows["target"] if self.target_columns is None else rows[self.target_columns]
        return torch.tensor(values.to_numpy(dtype=np.float32), dtype=torch.float32)

    def split_table(self) -> pd.DataFrame:
        """image, patient, split for every labelled image (saved as splits.csv)."""
        return self.table[["image", "patient_id", "split"]].rename(columns={"patient_id": "patient"})

    def eval_set_names(self) -> list[str]:
        names = ("test", *getattr(self, "source_tables", {}), "external")
        return [name for name in names if name in self.datasets and len(self.datasets[name])]

    def _loader(self, name: str, shuffle: bool = False, sampler=None) -> DataLoader:
        if isinstance(self.datasets[name], IterableDataset):  # data.format=shards, training split
            from cxr.data.shards import shard_loader

            return shard_loader(self.datasets[name], self.batch_size, self.num_workers, collate_batch, self.pin_memory)
        return DataLoader(
            self.datasets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=collate_batch,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0 and name in ("train", "val"),
        )

    def _distributed_validation_sampler(self, name: str = "val"):
        """Under DDP, the validation split is divided between the processes without the duplicates that Lightning's
        padded DistributedSampler adds, so that the synced validation metrics (AUROC over all processes'
        predictions) are over exactly the validation images, as in a single-process run. Training keeps Lightning's
        sampler (equal batch counts per process are needed there)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        return UnrepeatedDistributedSampler(self.datasets[name], shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", sampler=self._distributed_validation_sampler())

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def eval_dataloader(self, name: str) -> DataLoader:
        return self._loader(name)
