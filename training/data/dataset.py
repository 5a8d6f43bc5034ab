"""Face-crop datasets and samplers for training: the kernel's geometry and normalisation, albumentations between.

Training crops are resized as the kernel does, augmented, then zero-padded as the kernel does; validation crops
get the kernel's preprocessing only. Samplers: `balanced` (classes drawn equally), `pairs` (each fake beside its
own original) and `shuffle`; any of them can mix in self-blended fakes (training/data/sbi.py).
"""
from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

import albumentations as A

from dfdc_core.faces import model_images, model_input
from training.data.codec import H264Compression
from training.data.folds import DEFAULT_PERSON_IDS, read_person_ids
from training.data.perturb import PARAMETERS, image_seed
from training.data.perturb import transform as perturbation
from training.data.sbi import parse_landmarks, self_blend

# each transform's settings besides `p`; the five perturbations take their one parameter from training/data/perturb.py
AUGMENTATIONS = {"hflip": (), "shift_scale_rotate": ("shift", "scale", "rotate"),
                 "color_jitter": ("brightness", "contrast", "saturation", "hue"), "gray": (),
                 "downscale": ("scale",), "h264": ("qp",),
                 **{name: (parameter,) for name, (parameter, _) in PARAMETERS.items()}, "cutout": ("holes", "size")}
# the perturbations shared with robustness evaluation (training/data/perturb.py), in pipeline order, default ranges
PERTURBATION_DEFAULTS = {"jpeg": (40, 95), "blur": (0.5, 1.5), "gauss_noise": (0.01, 0.05),
                         "salt_pepper": (0.005, 0.02), "sharpen": (0.1, 0.3)}


def build_augmentation(settings: dict[str, Any]) -> A.Compose:
    """An albumentations pipeline from the config's `augment` block: each transform's `p` and ranges."""
    unknown = sorted(set(settings) - set(AUGMENTATIONS))
    if unknown:
        raise KeyError(f"augment: unknown transforms {unknown}; known: {list(AUGMENTATIONS)}")
    for name, options in settings.items():
        extra = sorted(set(options or {}) - {"p", *AUGMENTATIONS[name]})
        if extra:
            raise KeyError(f"augment.{name}: unknown settings {extra}; it takes p and {list(AUGMENTATIONS[name])}")

    def p(name: str) -> float:
        return float(settings.get(name, {}).get("p", 0.0))

    def get(name: str, key: str, default: Any) -> Any:
        return settings.get(name, {}).get(key, default)

    shift, rotate = get("shift_scale_rotate", "shift", 0.05), get("shift_scale_rotate", "rotate", 10)
    return A.Compose([
        A.HorizontalFlip(p=p("hflip")),
        A.Affine(translate_percent=(-shift, shift), scale=tuple(get("shift_scale_rotate", "scale", (0.9, 1.1))),
                 rotate=(-rotate, rotate),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=p("shift_scale_rotate")),
        A.ColorJitter(brightness=get("color_jitter", "brightness", 0.2), contrast=get("color_jitter", "contrast", 0.2),
                      saturation=get("color_jitter", "saturation", 0.2), hue=get("color_jitter", "hue", 0.02),
                      p=p("color_jitter")),
        A.ToGray(p=p("gray")),
        A.Downscale(scale_range=tuple(get("downscale", "scale", (0.5, 0.9))),
                    interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}, p=p("downscale")),
        H264Compression(qp_range=tuple(get("h264", "qp", (24, 40))), p=p("h264")),
        *(perturbation(name, tuple(get(name, PARAMETERS[name][0], default)), p(name))
          for name, default in PERTURBATION_DEFAULTS.items()),
        A.CoarseDropout(num_holes_range=tuple(get("cutout", "holes", (1, 2))),
                        hole_height_range=tuple(get("cutout", "size", (0.1, 0.3))),
                        hole_width_range=tuple(get("cutout", "size", (0.1, 0.3))), fill=0, p=p("cutout")),
    ])


def read_crop(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"face crop {path} is missing or unreadable; rerun extract_faces.py for its video")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class CropDataset(Dataset):
    """Rows of the face index → (normalised tensor, target from `label_column`).

    A crop goes through the kernel's geometry (`isotropic_resize`, then `pad_square`) with the augmentation, if
    any, between the two, so it never touches the zero padding. Items `len(rows) + i` are self-blended fakes
    (training/data/sbi.py) made from crop i, when `sbi_margin` is given and crop i has landmarks.
    Every item's random draws come from (seed, epoch, item), so two epochs, two workers and two runs differ
    where they should and repeat where they should; call `set_epoch` every epoch.
    """

    def __init__(self, rows: pd.DataFrame, root: Path, input_size: int, mean: tuple[float, float, float],
                 std: tuple[float, float, float], augmentation: A.BasicTransform | None = None,
                 label_column: str = "label", seed: int = 0, sbi_margin: float | None = None):
        self.paths = [root / path for path in rows["path"]]
        self.labels = rows[label_column].to_numpy(dtype=np.float32)
        self.landmarks = [parse_landmarks(text) for text in rows["landmarks"]] if "landmarks" in rows else \
            [None] * len(rows)
        self.input_size, self.mean, self.std = input_size, tuple(mean), tuple(std)
        self.augmentation, self.seed, self.epoch, self.sbi_margin = augmentation, seed, 0, sbi_margin

    def __len__(self) -> int:
        return 2 * len(self.paths) if self.sbi_margin is not None else len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def blendable(self) -> np.ndarray:
        """Row numbers of the real crops an SBI fake can be made from (with landmarks)."""
        return np.array([i for i, (label, points) in enumerate(zip(self.labels, self.landmarks))
                         if label == 0 and points is not None], dtype=np.int64)

    def crop(self, index: int) -> np.ndarray:
        """Item `index` as a face crop: the stored crop, or its self-blended fake."""
        row, blended = index % len(self.paths), index >= len(self.paths)
        crop = read_crop(self.paths[row])
        if blended:
            if self.landmarks[row] is None:
                raise ValueError(f"{self.paths[row]}: no landmarks for a self-blended fake; re-run extract_faces.py")
            crop = self_blend(crop, self.landmarks[row], self.sbi_margin,
                              np.random.default_rng(image_seed(self.seed, self.epoch, index, 1)))[0]
        return crop

    def augment(self, index: int) -> Callable[[np.ndarray], np.ndarray] | None:
        """Item `index`'s augmentation, seeded by (seed, epoch, index); None without one."""
        if self.augmentation is None:
            return None
        augmentation = self.augmentation

        def apply(image: np.ndarray) -> np.ndarray:
            augmentation.set_random_seed(image_seed(self.seed, self.epoch, index))
            return augmentation(image=image)["image"]
        return apply

    def image(self, index: int) -> np.ndarray:
        """Item `index` as the uint8 model input (before normalisation)."""
        return model_images([self.crop(index)], self.input_size, self.augment(index))[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = 1.0 if index >= len(self.paths) else self.labels[index]
        tensor = model_input([self.crop(index)], self.input_size, self.mean, self.std, self.augment(index))[0]
        return tensor, torch.tensor(label, dtype=torch.float32)


class EpochSampler(Sampler[int], abc.ABC):
    """Base of the training samplers: one shared draw per epoch, from (seed, epoch), split between ranks.

    Subclasses define `draw(generator)`, the epoch's item order for all ranks together; each rank takes every
    `world_size`-th block of `block` items (a block is a fake-real pair for `PairSampler`).
    """

    block = 1

    def __init__(self, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @abc.abstractmethod
    def draw(self, generator: np.random.Generator) -> np.ndarray:
        """The epoch's items for all ranks together."""

    def ranks_share(self) -> np.ndarray:
        order = self.draw(np.random.default_rng(image_seed(self.seed, self.epoch)))
        blocks = order.reshape(-1, self.block)
        usable = len(blocks) - len(blocks) % self.world_size
        return blocks[:usable][self.rank::self.world_size].reshape(-1)

    def __len__(self) -> int:
        return len(self.ranks_share())

    def __iter__(self) -> Iterator[int]:
        return iter(self.ranks_share().tolist())


class BalancedSampler(EpochSampler):
    """Classes (0/1 or class indices) drawn equally often, with replacement, `size` items an epoch.

    With `sbi` > 0 (one-logit models), that share of the FAKE draws is a self-blended fake of a random real crop
    (item `n + i` of `CropDataset`; drawn with the probabilities `blend_p`, uniform when None); with no fake crops
    at all, every FAKE draw is.
    """

    def __init__(self, labels: np.ndarray, rank: int = 0, world_size: int = 1, seed: int = 0,
                 size: int | None = None, sbi: float = 0.0, blendable: np.ndarray | None = None,
                 blend_p: np.ndarray | None = None):
        super().__init__(rank, world_size, seed)
        self.labels = labels.astype(np.int64)
        self.size = size or len(labels)
        self.sbi, self.blendable = sbi, blendable if blendable is not None else np.zeros(0, np.int64)
        self.blend_p = blend_p
        classes = np.unique(self.labels)
        present = set(classes.tolist()) | ({1} if sbi > 0 and len(self.blendable) else set())
        if len(present) < max(2, int(self.labels.max()) + 1):
            raise ValueError("sampler: balanced needs every class in the training fold (or sbi for the fakes); "
                             "use sampler: shuffle")
        self.by_class = {int(c): np.flatnonzero(self.labels == c) for c in sorted(present)}

    def draw(self, generator: np.random.Generator) -> np.ndarray:
        classes = generator.choice(sorted(self.by_class), self.size)
        items = np.empty(self.size, dtype=np.int64)
        for cls, members in self.by_class.items():
            drawn = np.flatnonzero(classes == cls)
            blended = np.zeros(len(drawn), dtype=bool)
            if cls == 1 and len(self.blendable):
                blended = generator.random(len(drawn)) < (self.sbi if len(members) else 1.0)
                items[drawn[blended]] = len(self.labels) + generator.choice(self.blendable, int(blended.sum()),
                                                                            p=self.blend_p)
            if len(members):
                items[drawn[~blended]] = generator.choice(members, int((~blended).sum()))
        return items


class ShuffleSampler(EpochSampler):
    """Every crop once an epoch (or `size` of them), shuffled: the data's own class shares."""

    def __init__(self, count: int, rank: int = 0, world_size: int = 1, seed: int = 0, size: int | None = None):
        super().__init__(rank, world_size, seed)
        self.count, self.size = count, size

    def draw(self, generator: np.random.Generator) -> np.ndarray:
        order = generator.permutation(self.count)
        return order[:self.size] if self.size else order


def box_array(boxes: pd.Series) -> np.ndarray:
    """index.csv `box` cells ("x1 y1 x2 y2") → `(n, 4)` floats."""
    return np.array([[float(v) for v in str(box).split()] for box in boxes], dtype=np.float64).reshape(-1, 4)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of `(n, 4)` and `(m, 4)` boxes."""
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def partner_rows(rows: pd.DataFrame) -> np.ndarray:
    """For each crop (rows numbered 0..n-1), the row of a crop of its original video, or -1: the same frame
    where both have one, else the nearest frame; among several persons, the box that overlaps most."""
    partners = np.full(len(rows), -1, dtype=np.int64)
    positions = {video: np.flatnonzero(rows["video"].to_numpy() == video) for video in rows["original"].unique()
                 if video}
    frames, boxes = rows["frame"].to_numpy(dtype=np.int64), box_array(rows["box"])
    for original, fake_rows in rows.groupby("original").indices.items():
        candidates = positions.get(original)
        if candidates is None or not len(candidates):
            continue
        distance = np.abs(frames[fake_rows, None] - frames[None, candidates])
        nearest = distance == distance.min(axis=1, keepdims=True)
        overlap = np.where(nearest, iou_matrix(boxes[fake_rows], boxes[candidates]) + 1.0, 0.0)
        partners[fake_rows] = candidates[overlap.argmax(axis=1)]
    return partners


def person_keys(rows: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """Who each crop shows, as far as the index says: its `group`, else the first of `columns` (estimated person
    ids) with a value; "" where none does."""
    keys = pd.Series("", index=rows.index)
    for column in ("group", *columns):
        if column in rows.columns:
            values = rows[column].astype(str)
            keys = keys.where(keys != "", values)
    return keys


def partner_pools(rows: pd.DataFrame, fakes: np.ndarray, reals: np.ndarray,
                  person_columns: tuple[str, ...] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
    """For the fakes whose original is not in the data: (fakes, the real crops to pair them with) — the reals
    showing the same person (`person_keys`) where there are any, else those of the same source, else every real.

    Without this a fake crop source with few reals (FF++ crops beside thousands of real photos) would be paired
    with other sources' reals, and "looks like that source" would explain the label."""
    sources = rows["source"].astype(str).to_numpy() if "source" in rows.columns else np.full(len(rows), "")
    persons = person_keys(rows, person_columns).to_numpy()
    by_source = {source: reals[sources[reals] == source] for source in np.unique(sources[reals])}
    by_person = pd.Series(reals).groupby([sources[reals], persons[reals]]).apply(np.asarray).to_dict()
    pools: dict[tuple[str, str], list[int]] = {}
    for fake in fakes.tolist():
        key = (sources[fake], persons[fake])
        if persons[fake] == "" or key not in by_person:
            key = (sources[fake], "") if sources[fake] in by_source else ("", "")
        pools.setdefault(key, []).append(fake)

    def pool(key: tuple[str, str]) -> np.ndarray:
        if key[1]:
            return by_person[key]
        return by_source[key[0]] if key[0] in by_source else reals

    return [(np.asarray(members), pool(key)) for key, members in pools.items()]


class PairSampler(EpochSampler):
    """Batches of fake-real pairs, so identity cannot explain a label (`sampler: pairs`).

    Every fake crop comes with a crop of its own original (`partner_rows`: time-aligned where both exist), or, when
    its original is not in the training data, a random real crop of the same person or at least the same source
    (`partner_pools`). With `sbi` > 0, that share of the pairs are
    a real crop and its self-blended fake, the real crops drawn with the probabilities `blend_p`; with `sbi` 1 or
    no fakes at all, every pair is one (without `blend_p`: each real crop once, in turn, until the epoch holds
    `size` items). Pairs are consecutive items, so an even batch size keeps each pair in one batch.
    """

    block = 2

    def __init__(self, rows: pd.DataFrame, rank: int = 0, world_size: int = 1, seed: int = 0,
                 size: int | None = None, sbi: float = 0.0, blendable: np.ndarray | None = None,
                 person_columns: tuple[str, ...] = (), blend_p: np.ndarray | None = None):
        super().__init__(rank, world_size, seed)
        rows = rows.reset_index(drop=True)
        labels = rows["label"].to_numpy(dtype=np.int64)
        self.count, self.size, self.sbi = len(rows), size, sbi
        self.fakes, self.reals = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        self.partners = partner_rows(rows)[self.fakes]
        orphans = self.fakes[self.partners < 0]
        pools = partner_pools(rows, orphans, self.reals, person_columns) if len(self.reals) else []
        self.pools = [(np.searchsorted(self.fakes, members), pool) for members, pool in pools]  # positions in fakes
        self.blendable = blendable if blendable is not None else np.zeros(0, np.int64)
        self.blend_p = blend_p
        self.blends_only = sbi >= 1.0 or not len(self.fakes)
        if not len(self.reals) or (self.blends_only and not (sbi > 0 and len(self.blendable))):
            raise ValueError("sampler: pairs needs real crops and fake crops (or sbi with landmarks)")

    def draw(self, generator: np.random.Generator) -> np.ndarray:
        if self.blends_only:
            pairs = [self.blended_pairs(self.blends_only_choice(generator))]
        else:
            pairs = [np.stack([self.fakes, self.drawn_partners(generator)], axis=1)]
            if self.sbi > 0 and len(self.blendable):
                count = int(round(len(self.fakes) * self.sbi / (1.0 - self.sbi)))
                pairs.append(self.blended_pairs(generator.choice(self.blendable, count, p=self.blend_p)))
        pairs = np.concatenate(pairs)[generator.permutation(sum(len(p) for p in pairs))]
        if self.size:
            pairs = pairs[:max(1, self.size // 2)]
        return pairs.reshape(-1)

    def drawn_partners(self, generator: np.random.Generator) -> np.ndarray:
        """Each fake's real partner: its original's crop, or one drawn from its pool (`partner_pools`)."""
        partners = self.partners.copy()
        for positions, pool in self.pools:
            partners[positions] = generator.choice(pool, len(positions))
        return partners

    def blended_pairs(self, chosen: np.ndarray) -> np.ndarray:
        """(self-blended fake, its real crop) rows for the real crops `chosen`."""
        return np.stack([self.count + chosen, chosen], axis=1)

    def blends_only_choice(self, generator: np.random.Generator) -> np.ndarray:
        """The real crops to blend when every fake is self-blended: each once, and repeated in turn until the
        epoch holds `size` items; with `blend_p`, `size` / 2 of them drawn with those probabilities."""
        if self.blend_p is not None:
            return generator.choice(self.blendable, max(1, (self.size or 2 * len(self.blendable)) // 2), p=self.blend_p)
        rounds = -(-(self.size or 0) // (2 * len(self.blendable)))
        return np.concatenate([generator.permutation(self.blendable) for _ in range(max(1, rounds))])


# `sbi: {bases}`: how the real crops to self-blend are drawn (`blend_probabilities`)
SBI_BASES = ("crop", "source")


def blend_probabilities(rows: pd.DataFrame, blendable: np.ndarray, bases: str) -> np.ndarray | None:
    """How often each blendable real crop is drawn as a self-blending base (`sbi: {bases}`): None for `crop`
    (every crop alike, the default), or for `source` every source of the index (its `source` column) the same
    share, so thousands of photos do not outweigh a few hundred video frames."""
    if bases == "crop":
        return None
    if bases != "source":
        raise ValueError(f"sbi bases is {bases!r}; choose one of {SBI_BASES}")
    sources = (rows["source"].astype(str).to_numpy() if "source" in rows.columns else np.full(len(rows), ""))[blendable]
    names, inverse, counts = np.unique(sources, return_inverse=True, return_counts=True)
    return 1.0 / (len(names) * counts[inverse])


def balanced_sampler(train: pd.DataFrame, dataset: CropDataset, sbi: float, bases: str = "crop",
                     **common) -> EpochSampler:
    blendable = dataset.blendable()
    return BalancedSampler(dataset.labels, sbi=sbi, blendable=blendable,
                           blend_p=blend_probabilities(train, blendable, bases), **common)


def pair_sampler(train: pd.DataFrame, dataset: CropDataset, sbi: float, bases: str = "crop",
                 **common) -> EpochSampler:
    blendable = dataset.blendable()
    return PairSampler(train, sbi=sbi, blendable=blendable, blend_p=blend_probabilities(train, blendable, bases),
                       person_columns=tuple(rule["column"] for rule in read_person_ids(DEFAULT_PERSON_IDS)), **common)


def shuffle_sampler(train: pd.DataFrame, dataset: CropDataset, sbi: float, bases: str = "crop",
                    **common) -> EpochSampler:
    return ShuffleSampler(len(dataset.labels), **common)


# the training config's `sampler` → the sampler over a fold's training rows and their dataset
SAMPLERS: dict[str, Callable[..., EpochSampler]] = {"balanced": balanced_sampler, "pairs": pair_sampler,
                                                    "shuffle": shuffle_sampler}
