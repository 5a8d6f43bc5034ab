"""`training/train_fold.py` and its library (`training/engine/`): a 1-epoch CPU run of a tiny model, --resume after a
stop, a 2-process torchrun (gloo); checkpoints load with `weights_only=True` (RNG states and metrics survive as
tensors and plain values, a checkpoint holding any other object is refused unread)."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dfdc_core.manifest import Manifest, verify_manifest
from dfdc_core.models import load_classifier
from dfdc_core.preprocessing import Preprocessing
from kernel.config import load_config
from kernel.scorer import load_scorer
from tests.helpers import TINY_MODELS
from training.data.dataset import (
    BalancedSampler,
    EpochSampler,
    build_augmentation,
    read_crop,
)
from training.data.folds import assign_folds
from training.engine.optim import build_ema, build_scheduler
from training.engine.pretrained import load_pretrained, map_lukemelas_keys
from training.engine.train_fold import (
    ResumeError,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from training.train_fold import main as train_main

REPO = Path(__file__).resolve().parents[1]
ARCH, SIZE = TINY_MODELS[0]


def write_synthetic_crops(folder: Path, videos: int = 8, frames: int = 3, seed: int = 0) -> Path:
    """Face-crop-like images (real: bluish, fake: reddish) with an extract_faces.py style index and folds."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(videos):
        label = number % 2
        original = f"v{number - 1}.mp4" if label else ""
        for frame in range(frames):
            image = rng.integers(0, 120, (70, 56, 3), dtype=np.uint8)
            image[..., 0 if label else 2] += 100
            path = Path("crops") / "part0" / f"v{number}" / f"{frame:04d}_0.jpg"
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / path), image)
            rows.append({"video": f"v{number}.mp4", "frame": frame * 10, "person": 0, "label": label,
                         "original": original, "part": "part0", "path": str(path), "box": "0 0 10 10", "score": 0.99})
    index = pd.DataFrame(rows)
    index.to_csv(folder / "index.csv", index=False)
    videos_table = index.drop_duplicates("video")[["video", "label", "original"]]
    assign_folds(videos_table, k=2).to_csv(folder / "folds.csv", index=False)
    return folder


def write_config(folder: Path, crops: Path, **overrides) -> Path:
    config = {"arch": ARCH, "input_size": SIZE, "crops": str(crops), "out": str(folder / "runs"), "epochs": 1,
              "batch_size": 4, "num_workers": 0, "device": "cpu", "lr": 1e-3, "early_stopping": None, **overrides}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    return write_synthetic_crops(tmp_path_factory.mktemp("crops"))


@pytest.mark.slow
def test_one_epoch_writes_weights_manifest_oof_and_plots(tmp_path, crops):
    train_main(["--config", str(write_config(tmp_path, crops)), "--fold", "0"])
    run = tmp_path / "runs" / f"{ARCH}_fold0"
    for name in ("config.yaml", "last.pt", "weights_fp16.pth", "metrics.csv", "loss_curve.png", "oof.csv"):
        assert (run / name).is_file(), name
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1]
    assert {"train_loss", "val_loss", "val_log_loss", "val_auc", "val_accuracy"} <= set(metrics.columns)
    manifest = Manifest.load(tmp_path / "runs" / "weights_manifest.json")
    verify_manifest(manifest)
    (spec,) = manifest.models
    assert (spec.name, spec.arch, spec.input_size) == (f"{ARCH}_fold0", ARCH, SIZE)
    entry = json.loads((tmp_path / "runs" / "weights_manifest.json").read_text())["models"][0]
    assert entry["fold"] == 0 and entry["val_log_loss"] == pytest.approx(metrics["val_log_loss"].min(), abs=1e-5)
    assert all(v.dtype in (torch.float16, torch.int64) for v in torch.load(spec.file, weights_only=True).values())
    load_classifier(spec, "cpu")
    oof = pd.read_csv(run / "oof.csv")
    folds = pd.read_csv(crops / "folds.csv")
    assert list(oof.columns) == ["video", "frame", "person", "model", "group", "prob", "label"]
    assert (oof["group"] == ARCH).all() and entry["group"] == ARCH
    assert set(oof["video"]) == set(folds.loc[folds["fold"] == 0, "video"])
    assert oof["prob"].between(0, 1).all() and (oof["model"] == spec.name).all()


@pytest.mark.slow
def test_the_manifest_records_the_crop_margin_of_the_crops_and_the_kernel_cuts_with_it(tmp_path, crops):
    config = write_config(tmp_path, crops, out=str(tmp_path / "default"))
    train_main(["--config", str(config), "--fold", "0"])
    (spec,) = Manifest.load(tmp_path / "default" / "weights_manifest.json").models
    assert spec.crop_margin == load_config()["crop_margin"]  # no settings.json: the kernel's default margin
    cut = tmp_path / "crops_cut_tight"
    shutil.copytree(crops, cut)
    (cut / "settings.json").write_text(json.dumps({"frames": 3, "max_side": None, "key": "test",
                                                   "config": load_config(crop_margin=0.1)}))
    train_main(["--config", str(write_config(tmp_path, cut)), "--fold", "0"])
    manifest = tmp_path / "runs" / "weights_manifest.json"
    assert Manifest.load(manifest).crop_margin == 0.1
    assert load_scorer(Manifest.load(manifest), load_config()).config["crop_margin"] == 0.1
    (entry,) = json.loads(manifest.read_text())["models"]  # the whole record: frames, detector, geometry
    assert entry["preprocessing"] == Preprocessing.of_config(load_config(crop_margin=0.1), frames=3).as_dict()


@pytest.mark.slow
@pytest.mark.parametrize("tta_hflip", [True, False])
def test_the_kernel_scores_crops_with_the_flip_tta_of_the_oof_scores(tmp_path, crops, tta_hflip):
    """The manifest records whether the OOF scores (the stacker's training data) were made with flip TTA, and the
    kernel scores alike whatever its config says: the same crops get the OOF's probabilities."""
    train_main(["--config", str(write_config(tmp_path, crops, tta_hflip=tta_hflip)), "--fold", "0"])
    manifest = Manifest.load(tmp_path / "runs" / "weights_manifest.json")
    (spec,) = manifest.models
    assert spec.tta_hflip is tta_hflip
    oof = pd.read_csv(tmp_path / "runs" / f"{ARCH}_fold0" / "oof.csv")
    index = pd.read_csv(crops / "index.csv").merge(oof, on=["video", "frame", "person"], validate="1:1")
    scorer = load_scorer(manifest, load_config(tta_hflip=not tta_hflip))
    probs = scorer.classify_crops([read_crop(crops / path) for path in index["path"]])[spec.name]
    assert np.allclose(probs, index["prob"], atol=1e-5)
    other = load_scorer(dataclasses.replace(manifest, models=(dataclasses.replace(spec, tta_hflip=None),)),
                        load_config(tta_hflip=not tta_hflip))  # not recorded: the config decides
    assert not np.allclose(other.classify_crops([read_crop(crops / path) for path in index["path"]])[spec.name],
                           index["prob"], atol=1e-5)


@pytest.mark.slow
def test_rerun_replaces_its_manifest_entry_and_keeps_others(tmp_path, crops):
    config = write_config(tmp_path, crops)
    for fold in (0, 1, 0):
        train_main(["--config", str(config), "--fold", str(fold)])
    names = [m["name"] for m in json.loads((tmp_path / "runs" / "weights_manifest.json").read_text())["models"]]
    assert sorted(names) == [f"{ARCH}_fold0", f"{ARCH}_fold1"]


@pytest.mark.slow
def test_early_stopping_ends_training_after_that_many_epochs_without_a_better_val_log_loss(tmp_path, crops,
                                                                                         monkeypatch):
    import training.engine.train_fold as trainer

    losses = iter([0.6, 0.5, 0.55, 0.52, 0.4, 0.3])  # best at epoch 2, then two epochs without a better one
    real_metrics = trainer.validation_metrics
    monkeypatch.setattr(trainer, "validation_metrics",
                        lambda *args: dict(real_metrics(*args), val_log_loss=next(losses)))
    train_main(["--config", str(write_config(tmp_path, crops, epochs=6, early_stopping=2, export="best")),
                "--fold", "0"])
    metrics = pd.read_csv(tmp_path / "runs" / f"{ARCH}_fold0" / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3, 4]
    entry = json.loads((tmp_path / "runs" / "weights_manifest.json").read_text())["models"][0]
    assert entry["val_log_loss"] == pytest.approx(0.5)  # the best epoch's weights exported


@pytest.mark.slow
def test_the_manifest_may_be_named_in_out_or_a_parent_of_it(tmp_path, crops):
    out = tmp_path / "project" / "runs"
    manifest = tmp_path / "project" / "models.json"
    train_main(["--config", str(write_config(tmp_path, crops, out=str(out), manifest=str(manifest))), "--fold", "0"])
    (spec,) = Manifest.load(manifest).models
    assert spec.file == out / f"{ARCH}_fold0" / "weights_fp16.pth"
    assert json.loads(manifest.read_text())["models"][0]["file"] == f"runs/{ARCH}_fold0/weights_fp16.pth"
    elsewhere = write_config(tmp_path, crops, out=str(out), manifest=str(tmp_path / "project" / "sub" / "m.json"))
    with pytest.raises(ValueError, match=r"is not under the manifest's folder .*sub; set 'manifest' to a file in OUT "
                                         r"or a parent of it$"):
        train_main(["--config", str(elsewhere), "--fold", "0"])


@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch(tmp_path, crops, caplog):
    config = write_config(tmp_path, crops, epochs=2, sampler="shuffle", class_weights=True, schedule="onecycle",
                          optimizer="sgd", label_smoothing=0.1, ema=0.9)
    train_main(["--config", str(config), "--fold", "1", "--stop-after", "1"])
    run = tmp_path / "runs" / f"{ARCH}_fold1"
    first = pd.read_csv(run / "metrics.csv")
    assert first["epoch"].tolist() == [1] and not (run / "oof.csv").exists()
    caplog.set_level("INFO", logger="train_fold")
    train_main(["--config", str(config), "--fold", "1", "--resume"])
    assert "resumed from" in caplog.text and "after epoch 1" in caplog.text
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    pd.testing.assert_frame_equal(metrics.iloc[:1], first)
    assert (run / "oof.csv").is_file()


def test_resume_without_checkpoint_says_how_to_start(tmp_path, crops, capsys):
    assert train_main(["--config", str(write_config(tmp_path, crops)), "--fold", "0", "--resume"]) == 2
    checkpoint = tmp_path / "runs" / f"{ARCH}_fold0" / "last.pt"
    assert capsys.readouterr().err == f"error: --resume: no checkpoint at {checkpoint}; run without --resume to start\n"


def test_resume_from_an_empty_checkpoint_is_exit_2_naming_it(tmp_path, crops, capsys):
    """Issue 33: an empty last.pt (a kill while it was written by an older version, a full disk) traced back."""
    config = write_config(tmp_path, crops)
    checkpoint = tmp_path / "runs" / f"{ARCH}_fold0" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert train_main(["--config", str(config), "--fold", "0", "--resume"]) == 2
    assert capsys.readouterr().err == (f"error: --resume: {checkpoint} is an empty file that torch.load cannot read "
                                       "(EOFError); run without --resume to start afresh\n")


def test_unknown_config_key_is_named(tmp_path, crops, capsys):
    path = write_config(tmp_path, crops, learning_rate=0.1)
    assert train_main(["--config", str(path), "--fold", "0"]) == 2
    assert f"error: --config {path}: unknown keys ['learning_rate']" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, crops):
    config = write_config(tmp_path, crops, arch=TINY_MODELS[1][0], input_size=TINY_MODELS[1][1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(REPO / "training" / "train_fold.py"),
                             "--config", str(config), "--fold", "0"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "runs" / f"{TINY_MODELS[1][0]}_fold0"
    assert (run / "oof.csv").is_file() and (run / "weights_fp16.pth").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["world_size"] == 2


def test_balanced_sampler_splits_one_draw_between_ranks():
    labels = np.array([0] * 90 + [1] * 10)
    single = list(BalancedSampler(labels, 0, 1, seed=3))
    ranks = [list(BalancedSampler(labels, rank, 2, seed=3)) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 50
    assert sorted(ranks[0] + ranks[1]) == sorted(single)  # one shared draw, each rank its own half of it
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    assert 0.35 < labels[single].mean() < 0.65  # classes drawn equally, not at the data's 10 % fakes


class Numbered(EpochSampler):
    """Draws the positions 0..size-1 shuffled: every position once, so each rank's share can be told apart."""

    def __init__(self, size: int, rank: int, world_size: int, block: int = 1):
        super().__init__(rank, world_size, seed=3)
        self.size, self.block = size, block

    def draw(self, generator: np.random.Generator) -> np.ndarray:
        return generator.permutation(self.size)


@pytest.mark.parametrize("world_size,block", [(2, 1), (3, 1), (3, 2)])
def test_ranks_take_disjoint_equal_slices_of_one_draw(world_size, block):
    shares = [list(Numbered(20, rank, world_size, block)) for rank in range(world_size)]
    whole = list(Numbered(20, 0, 1, block))
    usable = (20 // block // world_size) * world_size * block  # the last incomplete round of blocks is left out
    assert {len(share) for share in shares} == {usable // world_size}
    assert len(set().union(*map(set, shares))) == usable  # no position on two ranks
    assert sorted(sum(shares, [])) == sorted(whole[:usable])
    if block == 2:  # a block (a fake-real pair) stays whole on one rank
        for share in shares:
            starts = [whole.index(share[i]) for i in range(0, len(share), 2)]
            assert all(start % 2 == 0 and whole[start + 1] == share[i * 2 + 1] for i, start in enumerate(starts))


def test_every_augmentation_runs_and_keeps_shape():
    names = ("hflip", "shift_scale_rotate", "color_jitter", "gray", "downscale", "h264", "jpeg", "blur",
             "gauss_noise", "salt_pepper", "sharpen", "cutout")
    transforms = build_augmentation({name: {"p": 1.0} for name in names})
    image = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    out = transforms(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    with pytest.raises(KeyError, match="mixup"):
        build_augmentation({"mixup": {"p": 1.0}})


def test_gray_augmentation_gives_three_equal_channels():
    image = np.random.default_rng(2).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    out = build_augmentation({"gray": {"p": 1.0}})(image=image)["image"]
    assert out.shape == image.shape and np.array_equal(out[..., 0], out[..., 1])
    assert np.array_equal(out[..., 1], out[..., 2]) and not np.array_equal(out, image)


def test_a_transform_at_p_0_leaves_the_other_transforms_draws_unchanged():
    """Listing an unused transform (p 0; albumentations leaves it out) keeps a recipe's augmentation, draw for draw."""
    settings = {"hflip": {"p": 0.5}, "color_jitter": {"p": 0.5}, "jpeg": {"p": 0.5}, "cutout": {"p": 0.5}}
    plain = build_augmentation(settings)
    listed = build_augmentation({**settings, "gray": {"p": 0.0}, "downscale": {"p": 0.0}, "h264": {"p": 0.0},
                                 "blur": {"p": 0}})
    image = np.random.default_rng(1).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    outputs = []
    for seed in range(20):
        plain.set_random_seed(seed)
        listed.set_random_seed(seed)
        outputs.append((plain(image=image)["image"], listed(image=image)["image"]))
    assert all(np.array_equal(a, b) for a, b in outputs)
    assert len({a.tobytes() for a, _ in outputs}) > 5  # the draws do vary with the seed


def test_downscale_augmentation_removes_detail_finer_than_its_scale_and_keeps_the_rest():
    """Half the resolution and back: a one-pixel checkerboard turns grey, a smooth gradient stays as it was."""
    halve = build_augmentation({"downscale": {"p": 1.0, "scale": [0.5, 0.5]}})
    rows, columns = np.indices((SIZE, SIZE))
    checkerboard = np.repeat((((rows + columns) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    out = halve(image=checkerboard)["image"]
    assert out.shape == checkerboard.shape and out.std() < 0.1 * checkerboard.std()
    gradient = np.repeat((columns * 255 // (SIZE - 1)).astype(np.uint8)[..., None], 3, axis=2)
    assert np.abs(halve(image=gradient)["image"].astype(int) - gradient).mean() < 3
    with pytest.raises(KeyError, match="factor"):
        build_augmentation({"downscale": {"p": 1.0, "factor": 0.5}})


def test_h264_augmentation_codes_each_crop_on_its_own_and_stronger_with_its_quantiser():
    """An odd-sized crop keeps its size; higher qp loses more; the output depends on the image and qp alone (not on
    what the cached encoder coded before); a qp outside x264's range is refused."""
    from training.data.codec import h264_roundtrip

    rows, columns = np.indices((61, 90))
    texture = 120 + 50 * np.sin(rows / 3.0) * np.cos(columns / 5.0) + 30 * np.sin((rows + columns) / 11.0)
    image = np.stack([texture + 20, texture, 0.8 * texture], axis=2).clip(0, 255).astype(np.uint8)
    errors = {}
    for qp in (20, 32, 44):
        out = h264_roundtrip(image, qp)
        assert out.shape == image.shape and out.dtype == np.uint8
        errors[qp] = np.abs(out.astype(int) - image).mean()
    assert errors[20] < errors[32] < errors[44] and errors[20] < 3 < errors[44]
    first = h264_roundtrip(image, 32)
    h264_roundtrip(image[::-1].copy(), 32)  # the same cached encoder codes another image in between
    assert np.array_equal(h264_roundtrip(image, 32), first)
    drawn = build_augmentation({"h264": {"p": 1.0, "qp": [32, 32]}})(image=image)["image"]
    assert np.array_equal(drawn, first)
    with pytest.raises(ValueError, match="0 to 51"):
        h264_roundtrip(image, 60)
    with pytest.raises(ValueError, match="augment.h264.qp"):
        build_augmentation({"h264": {"p": 1.0, "qp": [40, 30]}})


def test_efficientnet_lite_checkpoint_keys_map_onto_timm(tmp_path, caplog):
    """A lukemelas-style checkpoint made from a timm model maps back key for key; the head is reported."""
    from dfdc_core.models import create_classifier

    source = create_classifier("tf_efficientnet_lite0", num_classes=1000)
    lukemelas = {}
    for key, tensor in source.state_dict().items():
        lukemelas[to_lukemelas(key, source)] = tensor
    renamed, unmapped = map_lukemelas_keys(lukemelas, source)
    assert unmapped == [] and set(renamed) == set(source.state_dict())
    path = tmp_path / "lite0.pth"
    torch.save(lukemelas, path)
    target = create_classifier("tf_efficientnet_lite0")
    report = load_pretrained(target, path, "tf_efficientnet_lite0")
    assert sorted(report.missing) == ["classifier.bias", "classifier.weight"]
    assert len(report.shape_mismatch) == 2 and report.unexpected == []
    assert torch.equal(target.state_dict()["conv_head.weight"], source.state_dict()["conv_head.weight"])
    assert "missing keys" in caplog.text


def to_lukemelas(key: str, model) -> str:
    """timm EfficientNet-Lite key → lukemelas name (the inverse mapping, written out for the test)."""
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    parts = key.split(".")
    if parts[0] != "blocks":
        return ".".join([top[parts[0]], *parts[1:]])
    flat = sum(len(stage) for stage in model.blocks[:int(parts[1])]) + int(parts[2])
    expand = hasattr(model.blocks[int(parts[1])][int(parts[2])], "conv_pwl")
    names = ({"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
              "conv_pwl": "_project_conv", "bn3": "_bn2"} if expand else
             {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"})
    return ".".join(["_blocks", str(flat), names[parts[3]], *parts[4:]])


def test_pretrained_timm_offline_names_the_local_file_way(monkeypatch):
    from dfdc_core.models import create_classifier

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="needs internet access.*local state_dict file"):
        load_pretrained(create_classifier("resnet18"), "timm", "resnet18")


CONFIG = {"arch": "test_efficientnet", "input_size": 64, "epochs": 2, "schedule": "onecycle", "lr": 1e-3,
          "min_lr_ratio": 0.01}


def training_objects():
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = build_scheduler(CONFIG, optimizer, steps_per_epoch=3)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1))


def test_checkpoint_round_trips_with_weights_only(tmp_path):
    model, optimizer, scheduler, scaler = training_objects()
    state = TrainState(epoch=1, best_log_loss=0.4, history=[{"epoch": 1, "val_auc": np.float32(0.75),
                                                             "n": np.int64(12), "val_log_loss": np.float64(0.4)}])
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    ema = build_ema({"ema": 0.9}, model)
    ema.update_parameters(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    save_checkpoint(tmp_path / "last.pt", model, ema, optimizer, scheduler, scaler, state, CONFIG)
    expected = draws()
    assert isinstance(torch.load(tmp_path / "last.pt", weights_only=True), dict)
    fresh = training_objects()
    fresh_ema = build_ema({"ema": 0.9}, fresh[0])
    restored = load_checkpoint(tmp_path / "last.pt", fresh[0], fresh_ema, *fresh[1:], CONFIG)
    assert draws() == expected
    assert torch.equal(fresh_ema.module.weight, ema.module.weight)
    assert not torch.equal(fresh_ema.module.weight, model.weight)  # the average, not the last weights
    assert restored.history == [{"epoch": 1, "val_auc": 0.75, "n": 12, "val_log_loss": 0.4}]
    assert type(restored.history[0]["n"]) is int and restored.epoch == 1
    assert torch.equal(fresh[0].weight, model.weight)
    assert fresh[2].state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]


class WritesAFile:
    """Unpickling this calls `open(path, 'w')`: what a hostile checkpoint could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_checkpoint_with_other_objects_is_refused_unread(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {}, "rng": WritesAFile(marker)}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="refused unread"):
        model, *rest = training_objects()
        load_checkpoint(tmp_path / "last.pt", model, None, *rest, CONFIG)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ issue 33

def saved_checkpoint(path):
    """A real checkpoint of `training_objects`, written as train_fold.py writes it."""
    model, optimizer, scheduler, scaler = training_objects()
    save_checkpoint(path, model, None, optimizer, scheduler, scaler, TrainState(epoch=1), CONFIG)
    return path


def resume(path, ema: bool = False):
    model, *rest = training_objects()
    return load_checkpoint(path, model, build_ema({"ema": 0.9}, model) if ema else None, *rest, CONFIG)


@pytest.mark.parametrize("content,message", [
    (b"", "is an empty file that torch.load cannot read (EOFError); run without --resume to start afresh"),
    (b"last epoch: 3\n", "is a text file that torch.load cannot read ("),
    ("half", "is a zip archive (torch.save's format) that torch.load cannot read ("),
    ("weights", "is no train_fold.py checkpoint (OrderedDict without ['model', 'optimizer', 'scheduler', 'scaler', "
                "'train_state', 'rng', 'arch', 'input_size', 'ema']); run without --resume to start afresh"),
    ("list", "is no train_fold.py checkpoint (list without ['model', 'optimizer', 'scheduler', 'scaler', "
             "'train_state', 'rng', 'arch', 'input_size', 'ema']); run without --resume to start afresh"),
])
def test_a_checkpoint_that_cannot_be_resumed_is_named_with_the_fix(tmp_path, content, message):
    path = tmp_path / "last.pt"
    if content == "half":
        data = saved_checkpoint(path).read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif content == "weights":
        torch.save(torch.nn.Linear(4, 1).state_dict(), path)
    elif content == "list":
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    with pytest.raises(ResumeError) as error:
        resume(path)
    assert str(error.value).startswith(f"--resume: {path} {message}")


def test_a_missing_checkpoint_or_a_folder_says_how_to_start(tmp_path):
    for path in (tmp_path / "last.pt", tmp_path):
        with pytest.raises(ResumeError) as error:
            resume(path)
        assert str(error.value) == f"--resume: no checkpoint at {path}; run without --resume to start"


def test_a_checkpoint_of_another_run_is_named(tmp_path):
    path = saved_checkpoint(tmp_path / "last.pt")
    with pytest.raises(ResumeError) as error:
        resume(path, ema=True)
    assert str(error.value) == f"--resume: {path} was trained without ema; use the run's own config"
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "model": {"weight": torch.ones(3, 3)}}, path)
    with pytest.raises(ResumeError, match=r"does not fit this run \(RuntimeError: Error\(s\) in loading state_dict"):
        resume(path)
    torch.save({**payload, "train_state": {"epochs_done": 3}}, path)
    with pytest.raises(ResumeError, match=r"does not fit this run \(TypeError: .*epochs_done.*\); use the run's own "
                                          r"config, or run without --resume to start afresh$"):
        resume(path)
    torch.save({**payload, "arch": "other"}, path)
    with pytest.raises(ResumeError, match=r"is other@64, the config asks for test_efficientnet@64; use the run's own"):
        resume(path)
