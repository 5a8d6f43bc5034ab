"""Perturbations, FGSM/PGD, the training defences and the robustness CLI, on a tiny model trained to separate crafted crops."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import training.tools.robustness as robustness
from dfdc_core.manifest import manifest_entry
from dfdc_core.models import create_classifier, save_fp16_state_dict
from kernel.config import load_config
from tests.helpers import TINY_MODELS, faces_clip, write_video
from tests.test_train import write_config, write_synthetic_crops
from training.data.dataset import CropDataset
from training.data.index import read_index
from training.data.perturb import LEVELS, STRENGTHS, apply, fixed, image_seed
from training.tools.attacks import PixelModel, attack_toward
from training.tools.defences import Adversarial, Defence, defence_from_config
from training.tools.robustness import attack_success, faces_lost, video_face_loss
from training.tools.robustness import main as robustness_main
from training.train_fold import main as train_main

ARCH, SIZE = TINY_MODELS[0]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def bce_toward_fake(model: PixelModel, pixels: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(pixels)[:, 0]
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)))


def add_disguised_fake(folder: Path) -> None:
    """A fake video whose crops look like the real ones, in validation fold 0: missed clean by the trained model."""
    rng = np.random.default_rng(7)
    index, folds = read_index(folder / "index.csv"), pd.read_csv(folder / "folds.csv", keep_default_na=False)
    rows = []
    for frame in range(4):
        image = rng.integers(0, 120, (70, 56, 3), dtype=np.uint8)
        image[..., 2] += 100  # as write_synthetic_crops colours its real crops
        path = Path("crops") / "part0" / "disguised" / f"{frame:04d}_0.jpg"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / path), image)
        rows.append({**index.iloc[0].to_dict(), "video": "disguised.mp4", "frame": frame, "label": 1,
                     "original": "v0.mp4", "path": str(path)})
    pd.concat([index, pd.DataFrame(rows)]).to_csv(folder / "index.csv", index=False)
    extra = {"video": "disguised.mp4", "label": 1, "original": "v0.mp4", "group": -1, "fold": 0}
    pd.concat([folds, pd.DataFrame([extra])]).to_csv(folder / "folds.csv", index=False)


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    return write_synthetic_crops(tmp_path_factory.mktemp("robust_crops"))


@pytest.fixture(scope="module")
def trained(crops) -> PixelModel:
    """The tiny EfficientNet trained on the crafted crops until it separates them; batch-norm stats recomputed."""
    rows = read_index(crops / "index.csv")
    dataset = CropDataset(rows, crops, SIZE, (0, 0, 0), (1, 1, 1))
    pixels = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor(rows["label"].to_numpy(), dtype=torch.float32)
    torch.manual_seed(0)
    model = PixelModel(create_classifier(ARCH), MEAN, STD)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(20):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(pixels)[:, 0], labels)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.3:
            break
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # one pass in train mode below sets the exact statistics of these crops
    with torch.no_grad():
        model(pixels)
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(model(pixels)[:, 0])
    assert ((probs > 0.5).float() == labels).all(), "the tiny model should separate the crafted crops"
    model.fake_pixels = pixels[labels == 1]
    return model


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
@pytest.mark.parametrize("eps", [2, 8])
@pytest.mark.slow
def test_attack_raises_the_loss_within_eps_and_the_pixel_range(trained, method, eps):
    fakes = trained.fake_pixels
    adversarial = attack_toward(trained, fakes, 0.0, method, eps / 255, steps=5, step_size=0.25, seed=1)
    assert (adversarial - fakes).abs().max().item() <= eps / 255 + 1e-6
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    assert bce_toward_fake(trained, adversarial) > bce_toward_fake(trained, fakes) + 0.1


@pytest.mark.slow
def test_pgd_is_deterministic_under_its_seed(trained):
    fakes = trained.fake_pixels[:4]
    first, again, other = (attack_toward(trained, fakes, 0.0, "pgd", 2 / 255, steps=2, seed=s) for s in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_success_rate_counts_only_fakes_detected_clean():
    clean = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    after = np.array([0.2, 0.9, 0.1, 0.4, 0.05])  # the missed fakes (0.3, 0.1) are not counted as successes
    rate, detected = attack_success(clean, after)
    assert detected == 3 and rate == pytest.approx(2 / 3)
    rate, detected = attack_success(np.array([0.2]), np.array([0.1]))
    assert detected == 0 and np.isnan(rate)


@pytest.mark.parametrize("name", list(STRENGTHS))
def test_perturbations_are_deterministic_under_a_seed_and_grow_with_strength(name):
    image = np.random.default_rng(0).integers(30, 220, (64, 64, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 2)  # some structure for blur and sharpen to act on
    changes = []
    for level in LEVELS:
        transform = fixed(name, level)
        first, again = apply(transform, image, 11), apply(transform, image, 11)
        assert first.dtype == np.uint8 and first.shape == image.shape and np.array_equal(first, again)
        if name in ("gauss_noise", "salt_pepper"):
            assert not np.array_equal(first, apply(transform, image, 12))
        changes.append(np.abs(first.astype(np.int32) - image).mean())
    assert 0 < changes[0] < changes[1] < changes[2], changes


def test_seeded_crop_dataset_repeats_its_perturbation(crops):
    rows = read_index(crops / "index.csv")
    dataset = CropDataset(rows, crops, SIZE, MEAN, STD, fixed("gauss_noise", "strong"), seed=5)
    assert torch.equal(dataset[3][0], dataset[3][0]) and not torch.equal(dataset[3][0], dataset[4][0])
    assert image_seed(5, 3) != image_seed(5, 4) and image_seed(5, 3) == image_seed(5, 3)


@pytest.mark.slow
def test_adversarial_batch_stays_in_the_pixel_ball_and_box(trained):
    pixels = torch.cat([trained.fake_pixels[:3], torch.zeros(1, 3, SIZE, SIZE), torch.ones(2, 3, SIZE, SIZE)])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images, targets = (pixels - mean) / std, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    net = trained.model
    net.train()

    def batch_loss(model, x, t):
        return torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], t)

    defence = Defence(Adversarial("pgd", eps=4, steps=3, ratio=0.5), 0.0, MEAN, STD)
    mixed = defence.mix_adversarial(net, images, targets, batch_loss)
    back = mixed * std + mean
    assert net.training, "the model is back in train mode after making the examples"
    assert (back - pixels).abs().max().item() <= 4 / 255 + 1e-6
    assert back.min().item() >= -1e-6 and back.max().item() <= 1 + 1e-6
    assert not torch.equal(mixed[:3], images[:3]) and torch.equal(mixed[3:], images[3:])
    net.eval()


def test_lipschitz_penalty_is_the_pixel_gradient_norm():
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 1))
    images, targets = torch.randn(5, 3, 4, 4), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])

    def batch_loss(model, x, t):
        return torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], t)

    objective, loss = Defence(None, 0.5, MEAN, STD).objective(linear, images, targets, batch_loss)
    with torch.no_grad():  # d loss_i / d x_i = (sigmoid(z_i) - y_i) w; per pixel divide by std
        residual = torch.sigmoid(linear(images)[:, 0]) - targets
        weight = linear[1].weight.view(1, 3, 4, 4) / torch.tensor(STD).view(1, 3, 1, 1)
        expected = (residual.view(-1, 1, 1, 1) * weight).flatten(1).norm(dim=1).mean()
    assert objective.item() == pytest.approx(loss.item() + 0.5 * expected.item(), rel=1e-5)
    objective.backward()
    assert linear[1].weight.grad is not None and torch.isfinite(linear[1].weight.grad).all()


def test_bad_defence_settings_are_named():
    base = {"mean": MEAN, "std": STD, "lipschitz": 0.0}
    with pytest.raises(ValueError, match="adversarial.method"):
        defence_from_config({**base, "adversarial": {"method": "cw", "eps": 2}})
    with pytest.raises(ValueError, match="method and eps"):
        defence_from_config({**base, "adversarial": {"method": "pgd", "epsilon": 2}})
    with pytest.raises(ValueError, match="lipschitz"):
        defence_from_config({**base, "adversarial": None, "lipschitz": -1})


@pytest.mark.slow
def test_train_fold_with_pgd_and_lipschitz_runs_and_resumes(tmp_path, crops):
    config = write_config(tmp_path, crops, epochs=2, lipschitz=0.01,
                          adversarial={"method": "pgd", "eps": 4, "steps": 2, "ratio": 0.5})
    train_main(["--config", str(config), "--fold", "0", "--stop-after", "1"])
    run = tmp_path / "runs" / f"{ARCH}_fold0"
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1]
    train_main(["--config", str(config), "--fold", "0", "--resume"])
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2] and np.isfinite(metrics["train_loss"]).all()
    assert (run / "oof.csv").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["adversarial"]["method"] == "pgd"


def save_manifest(folder: Path, trained: PixelModel) -> Path:
    """The trained tiny EfficientNet and a random tiny ResNet, saved as a kernel manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    save_fp16_state_dict(trained.model, folder / "effnet.pth")
    torch.manual_seed(0)
    save_fp16_state_dict(create_classifier(TINY_MODELS[1][0]), folder / "resnet.pth")
    entries = [manifest_entry("trained", ARCH, folder / "effnet.pth", folder, SIZE, MEAN, STD),
               manifest_entry("random", TINY_MODELS[1][0], folder / "resnet.pth", folder, TINY_MODELS[1][1])]
    path = folder / "weights_manifest.json"
    path.write_text(json.dumps({"models": entries, "stacker": None}))
    return path


@pytest.mark.slow
def test_cli_writes_the_matrix_attacks_heatmaps_and_report(tmp_path, crops, trained, capsys):
    crops = Path(shutil.copytree(crops, tmp_path / "crops"))
    add_disguised_fake(crops)
    manifest = save_manifest(tmp_path / "models", trained)
    settings = tmp_path / "robustness.yaml"
    settings.write_text(yaml.safe_dump({"eps": [2, 8], "pgd_steps": 3, "num_workers": 0, "batch_size": 8,
                                        "perturbations": ["gauss_noise", "blur", "jpeg"]}))
    out = tmp_path / "report"
    robustness_main(["--manifest", str(manifest), "--crops", str(crops / "index.csv"), "--out", str(out),
                     "--folds", str(crops / "folds.csv"), "--fold", "0", "--config", str(settings), "--device", "cpu"])
    folds = pd.read_csv(crops / "folds.csv")
    index = read_index(crops / "index.csv")
    val = index[index["video"].isin(folds.loc[folds["fold"] == 0, "video"])]
    matrix = pd.read_csv(out / "perturbations.csv")
    assert len(matrix) == 2 * (1 + 3 * 3) and (matrix["crops"] == len(val)).all()
    assert set(matrix["perturbation"]) == {"clean", "gauss_noise", "blur", "jpeg"}
    assert matrix[["log_loss", "acc_real", "acc_fake"]].notna().all().all()
    attacks = pd.read_csv(out / "attacks.csv")
    assert len(attacks) == 2 * 2 * 2 and set(attacks["eps"]) == {2, 8}
    trained_rows = attacks[attacks["model"] == "trained"]
    fakes = int(val["label"].sum())
    clean = matrix[(matrix["model"] == "trained") & (matrix["perturbation"] == "clean")].iloc[0]
    detected = round(clean["acc_fake"] * fakes)
    assert (trained_rows["fakes"] == fakes).all() and (trained_rows["detected"] == detected).all()
    assert 0 < detected < fakes, "the disguised fakes are missed clean: the success rate divides by detected"
    assert np.allclose(trained_rows["success_rate"] * detected, np.round(trained_rows["success_rate"] * detected))
    pgd8 = trained_rows[(trained_rows["attack"] == "pgd") & (trained_rows["eps"] == 8)].iloc[0]
    assert pgd8["fake_log_loss_adv"] > pgd8["fake_log_loss_clean"] and pgd8["robust_acc_fake"] < pgd8["clean_acc_fake"]
    for name in ("heatmap_trained.png", "heatmap_random.png", "attacks.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    report = (out / "report.txt").read_text()
    assert "gauss_noise" in report and "strong" in report and "success rate" in report
    assert "Perturbation strengths" in capsys.readouterr().out


def test_cli_names_a_missing_index_and_a_missing_model(tmp_path, trained):
    manifest = save_manifest(tmp_path / "models", trained)
    with pytest.raises(FileNotFoundError, match="extract_faces"):
        robustness_main(["--manifest", str(manifest), "--crops", str(tmp_path / "index.csv"), "--out", str(tmp_path)])
    with pytest.raises(KeyError, match="xception"):
        robustness_main(["--manifest", str(manifest), "--crops", str(tmp_path / "index.csv"), "--out", str(tmp_path),
                         "--models", "xception"])


def test_faces_lost_counts_clean_faces_without_a_match():
    clean = [[(0, 0, 10, 10), (20, 20, 30, 30)], [(0, 0, 10, 10)]]
    perturbed = [[(1, 1, 10, 10)], []]
    assert faces_lost(clean, perturbed) == 2


@pytest.mark.slow
def test_faces_lost_are_counted_per_perturbation(tmp_path, monkeypatch):
    """A 'strong blur' that blanks the right half of each frame loses the right person's faces, and only those."""
    video = write_video(tmp_path / "two_faces.mp4", faces_clip(40))

    def perturb(transform: tuple[str, str], frame: np.ndarray, seed: int) -> np.ndarray:
        blanked = frame.copy()
        blanked[:, frame.shape[1] // 2:] = 0
        return blanked if transform == ("blur", "strong") else frame

    monkeypatch.setattr(robustness, "fixed", lambda name, level: (name, level))
    monkeypatch.setattr(robustness, "apply", perturb)
    settings = {"video_frames": 4, "seed": 0, "perturbations": ["gauss_noise", "blur"]}
    frame = video_face_loss([video], settings, load_config(), "cpu").set_index(["perturbation", "strength"])
    assert len(frame) == 2 * 3 and (frame["frames"] == 4).all() and (frame["persons_clean"] == 2).all()
    clean = frame["faces_clean"].iloc[0]
    assert (frame["faces_clean"] == clean).all() and clean >= 7  # two persons in (nearly) every frame
    strong_blur = frame.loc[("blur", "strong")]
    assert strong_blur["persons"] == 1 and 3 <= strong_blur["lost"] == clean - strong_blur["faces"]
    assert strong_blur["lost_share"] == strong_blur["lost"] / clean
    assert (frame.drop(index=[("blur", "strong")])["lost"] == 0).all()


def test_a_face_is_lost_when_no_perturbed_face_overlaps_it_enough():
    clean = [[(0, 0, 10, 10), (50, 50, 60, 60)], [(0, 0, 10, 10)]]
    assert faces_lost(clean, [[(0, 0, 10, 10)], []]) == 2
    assert faces_lost(clean, [[(0, 0, 10, 10), (50, 50, 60, 60)], [(0, 0, 10, 5)]]) == 0  # IoU 0.5 is found
    assert faces_lost(clean, [[(0, 0, 10, 10), (50, 50, 60, 60)], [(0, 0, 10, 4)]]) == 1  # IoU 0.4 is lost
    assert faces_lost(clean, [[], [(0, 0, 10, 4)]], iou=0.3) == 2
