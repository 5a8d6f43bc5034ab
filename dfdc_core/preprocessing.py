"""What a model was trained to see, recorded once and resolved once.

`Preprocessing` (frozen) holds the settings that made a model's training crops: the frames sampled per video, the face
detector's settings and the crop geometry (margin around the face, padding of stills). Extraction writes it with the
crops (`preprocessing` in their settings.json); training copies it into the model's manifest entry beside the model
input (`input_size`, `mean`, `std`); `dfdc_core.manifest` reads it into `ModelSpec.preprocessing`.

A kernel run resolves it once (`resolve_config`), as timm resolves a model's pretrained config into a data config: the
crop geometry is the model's contract, so the run cuts crops the way the models were trained; the frames and the
detector settings are the run's own trade-off of time against recall (fewer frames fit the 9-hour budget), so a
difference is logged, never forced.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from dfdc_core.values import is_number, is_numbers, is_positive_int

log = logging.getLogger("kernel")

GEOMETRY = ("crop_margin", "still_pad")  # adopted by a kernel run
MAX_CROP_MARGIN = 2.0  # a crop 5 faces wide: beyond it the crop is mostly zero padding, and its memory unbounded
MAX_STILL_PAD = 2.0  # an image padded to 5 times its side: room for any crop margin allowed


@dataclass(frozen=True)
class Preprocessing:
    frames: int
    detect_long_side: int
    mtcnn_min_face_size: int
    mtcnn_thresholds: tuple[float, float, float]
    min_face_score: float
    min_face_px: float
    crop_margin: float
    still_pad: float

    @classmethod
    def of_config(cls, config: dict[str, Any], frames: int | None = None) -> Preprocessing:
        """The preprocessing of a kernel config (`frames`: the count extraction sampled, if not the config's)."""
        return cls(frames=int(frames if frames is not None else config["frames"]),
                   detect_long_side=int(config["detect_long_side"]),
                   mtcnn_min_face_size=int(config["mtcnn_min_face_size"]),
                   mtcnn_thresholds=tuple(float(t) for t in config["mtcnn_thresholds"]),
                   min_face_score=float(config["min_face_score"]), min_face_px=float(config["min_face_px"]),
                   crop_margin=float(config["crop_margin"]), still_pad=float(config["still_pad"]))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, in field order (what settings.json and a manifest entry hold)."""
        return {**asdict(self), "mtcnn_thresholds": list(self.mtcnn_thresholds)}


def preprocessing_problem(data: Any) -> str | None:
    """None for a usable recorded preprocessing (every field, of its type and range), else what is wrong, in words."""
    if not isinstance(data, dict):
        return f"it is a JSON {type(data).__name__}, not an object"
    fields = list(Preprocessing.__dataclass_fields__)
    if sorted(data) != sorted(fields):
        return f"its keys are {sorted(data)}; it must have exactly {fields}"
    for key in ("frames", "detect_long_side", "mtcnn_min_face_size"):
        if not is_positive_int(data[key]):
            return f"'{key}' is {data[key]!r}; it must be a whole number above 0"
    if not (is_numbers(data["mtcnn_thresholds"], 3) and all(0 <= t <= 1 for t in data["mtcnn_thresholds"])):
        return f"'mtcnn_thresholds' is {data['mtcnn_thresholds']!r}; it must be 3 numbers from 0 to 1"
    if not (is_number(data["min_face_score"]) and 0 <= data["min_face_score"] <= 1):
        return f"'min_face_score' is {data['min_face_score']!r}; it must be a number from 0 to 1"
    for key in ("min_face_px",) + GEOMETRY:
        if not (is_number(data[key]) and data[key] >= 0):
            return f"'{key}' is {data[key]!r}; it must be a number of 0 or more"
    for key, most in (("crop_margin", MAX_CROP_MARGIN), ("still_pad", MAX_STILL_PAD)):
        if data[key] > most:
            return f"'{key}' is {data[key]!r}; it must be at most {most}"
    return None


def read_preprocessing(data: dict[str, Any]) -> Preprocessing:
    """A checked recorded preprocessing (`preprocessing_problem` is None) as the frozen object."""
    return Preprocessing(**{**data, "mtcnn_thresholds": tuple(float(t) for t in data["mtcnn_thresholds"])})


def crops_preprocessing(settings: dict[str, Any]) -> Preprocessing:
    """The preprocessing of a crop cache from its settings.json: its `preprocessing`, or, written before it was
    recorded, its kernel `config` and `frames`."""
    if "preprocessing" in settings:
        return read_preprocessing(settings["preprocessing"])
    return Preprocessing.of_config(settings["config"], settings.get("frames"))


def resolve_config(config: dict[str, Any], geometry: dict[str, float | None], trained: dict[str, Preprocessing],
                   where: str) -> dict[str, Any]:
    """The kernel config a run uses with a manifest's models (`where`, for messages): the crop geometry its models
    share (`geometry`: key → value, None where not recorded), and the config's frames and detector settings, whose
    differences from the `trained` preprocessing (model name → the one it records) are logged."""
    resolved = dict(config)
    for key in GEOMETRY:
        if geometry.get(key) is not None and geometry[key] != config[key]:
            log.info("%s: %s %.3g, as its models were trained (the config says %.3g)", where, key, geometry[key],
                     config[key])
            resolved[key] = geometry[key]
    for name, preprocessing in trained.items():
        if differences := list(differences_from(preprocessing, resolved)):
            log.info("%s: model %s was trained on crops made with %s; this run uses %s", where, name,
                     ", ".join(f"{key} {old}" for key, old, _ in differences),
                     ", ".join(f"{key} {new}" for key, _, new in differences))
    return resolved


def differences_from(preprocessing: Preprocessing, config: dict[str, Any]) -> Iterable[tuple[str, Any, Any]]:
    """(key, trained value, run value) of each recorded setting a run with `config` does not share."""
    run = Preprocessing.of_config(config).as_dict()
    for key, trained in preprocessing.as_dict().items():
        if trained != run[key]:
            yield key, trained, run[key]
