"""Training data: the kernel's geometry with augmentation before the padding, per-item random draws, the pair and
balanced samplers, self-blended images, per-sample class weights and the small head."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from dfdc_core.faces import model_images, normalise
from training.data.dataset import (
    BalancedSampler,
    CropDataset,
    PairSampler,
    blend_probabilities,
    build_augmentation,
    partner_rows,
)
from training.data.sbi import blend_mask, colour_shift, face_box, self_blend
from training.engine.losses import BinaryLoss, build_loss
from training.engine.train_config import check_sbi
from training.engine.train_fold import build_model

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
LANDMARKS = "30.0 38.0 50.0 38.0 40.0 50.0 32.0 60.0 48.0 60.0"  # eyes, nose, mouth corners in an 80x64 crop
NOISY = {"gauss_noise": {"p": 1.0, "std": [0.1, 0.2]}, "color_jitter": {"p": 1.0}, "jpeg": {"p": 1.0}}


def face_like(height: int = 80, width: int = 64, seed: int = 0) -> np.ndarray:
    """A textured crop with a brighter oval 'face' in the middle."""
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 90, (height, width, 3), dtype=np.uint8)
    cv2.ellipse(image, (width // 2, height // 2), (width // 4, height // 3), 0, 0, 360, (200, 160, 140), -1)
    return image


def crop_rows(folder: Path, specs: list[tuple[str, int, str, int]], image: np.ndarray | None = None) -> pd.DataFrame:
    """Write one crop per (video, label, original, frame) and an index with landmarks."""
    rows = []
    for number, (video, label, original, frame) in enumerate(specs):
        path = Path("crops") / video / f"{frame:04d}_0.png"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / path), image if image is not None else face_like(seed=number))
        rows.append({"video": video, "frame": frame, "person": 0, "label": label, "original": original,
                     "path": str(path), "box": "10 10 60 70", "landmarks": LANDMARKS})
    return pd.DataFrame(rows)


def test_validation_tensor_is_the_kernels_tensor(tmp_path):
    rows = crop_rows(tmp_path, [("a.mp4", 0, "", 0)])
    crop = cv2.cvtColor(cv2.imread(str(tmp_path / rows["path"][0])), cv2.COLOR_BGR2RGB)
    tensor, _ = CropDataset(rows, tmp_path, 96, MEAN, STD)[0]
    assert torch.equal(tensor, normalise(model_images([crop], 96), MEAN, STD)[0])


def test_augmentation_never_touches_the_zero_padding(tmp_path):
    rows = crop_rows(tmp_path, [("a.mp4", 0, "", 0)])  # 80x64: padded left and right at 96
    dataset = CropDataset(rows, tmp_path, 96, MEAN, STD, build_augmentation(NOISY))
    for epoch in range(3):
        dataset.set_epoch(epoch)
        image = dataset.image(0)
        assert not image[:, :9].any() and not image[:, -9:].any()  # 96 - round(64 * 96 / 80) = 19 columns of pad
        assert image[:, 10:86].any()


def test_draws_differ_between_epochs_and_workers_and_repeat_for_the_same_epoch(tmp_path):
    image = face_like()
    rows = crop_rows(tmp_path, [(f"v{i}.mp4", 0, "", 0) for i in range(4)], image=image)  # four identical crops
    dataset = CropDataset(rows, tmp_path, 64, MEAN, STD, build_augmentation(NOISY), seed=7)

    def epoch_batches(epoch: int) -> torch.Tensor:
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=1, num_workers=2, shuffle=False)
        return torch.cat([images for images, _ in loader])

    first, again, second = epoch_batches(1), epoch_batches(1), epoch_batches(2)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    assert not torch.equal(first[0], first[1])  # item 0 (worker 0) and item 1 (worker 1): same crop, own draws


def test_pair_sampler_puts_each_fake_beside_its_original_in_one_batch(tmp_path):
    specs = [(f"real{r}.mp4", 0, "", f) for r in range(2) for f in (0, 10, 20)]
    specs += [(f"fake{r}_{m}.mp4", 1, f"real{r}.mp4", f) for r in range(2) for m in range(2) for f in (0, 10, 20)]
    specs += [("orphan.mp4", 1, "gone.mp4", 0)]
    rows = crop_rows(tmp_path, specs)
    sampler = PairSampler(rows, seed=1)
    loader = DataLoader(CropDataset(rows, tmp_path, 32, MEAN, STD), sampler=sampler, batch_size=4)
    order = list(sampler)
    assert len(order) == 2 * int((rows["label"] == 1).sum())
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    for batch in batches:
        for fake, partner in zip(batch[0::2], batch[1::2]):
            assert rows["label"][fake] == 1 and rows["label"][partner] == 0
            if rows["original"][fake] != "gone.mp4":
                assert rows["video"][partner] == rows["original"][fake]
                assert rows["frame"][partner] == rows["frame"][fake]
    labels = torch.cat([labels for _, labels in loader])
    assert labels.mean() == 0.5


def test_partner_is_the_nearest_frame_when_the_same_frame_is_missing(tmp_path):
    rows = crop_rows(tmp_path, [("r.mp4", 0, "", 0), ("r.mp4", 0, "", 30), ("f.mp4", 1, "r.mp4", 25)])
    assert partner_rows(rows).tolist() == [-1, -1, 1]


def test_pair_sampler_with_sbi_and_real_crops_only(tmp_path):
    rows = crop_rows(tmp_path, [(f"r{i}.mp4", 0, "", 0) for i in range(5)])
    dataset = CropDataset(rows, tmp_path, 48, MEAN, STD, sbi_margin=0.3)
    order = list(PairSampler(rows, seed=0, sbi=1.0, blendable=dataset.blendable()))
    fakes, reals = order[0::2], order[1::2]
    assert all(f == r + len(rows) for f, r in zip(fakes, reals))  # each real crop beside its own blend
    assert sorted(reals) == list(range(5))
    assert [float(dataset[i][1]) for i in fakes] == [1.0] * 5


def test_pair_sampler_at_sbi_1_blends_every_fake_and_fills_the_epoch(tmp_path):
    specs = [(f"r{i}.mp4", 0, "", 0) for i in range(5)] + [(f"f{i}.mp4", 1, f"r{i}.mp4", 0) for i in range(5)]
    rows = crop_rows(tmp_path, specs)
    blendable = CropDataset(rows, tmp_path, 48, MEAN, STD, sbi_margin=0.3).blendable()
    order = np.array(list(PairSampler(rows, seed=0, size=24, sbi=1.0, blendable=blendable)))
    fakes, reals = order[0::2], order[1::2]
    assert len(order) == 24 and (fakes == reals + len(rows)).all()  # only blends: no fake crop of the data
    assert set(reals.tolist()) == set(range(5))  # the real crops in turn, repeated to fill the epoch
    with pytest.raises(ValueError, match="sbi with landmarks"):
        PairSampler(rows, seed=0, sbi=1.0, blendable=np.zeros(0, np.int64))


def test_sbi_bases_by_source_give_every_source_an_equal_share_of_the_blends():
    rows = pd.DataFrame({"label": [0] * 50 + [1] * 10 + [0] * 10, "video": [f"v{i}" for i in range(70)],
                         "frame": 0, "original": "", "box": "10 10 60 70",
                         "source": ["photos"] * 50 + ["videos"] * 20})
    blendable = np.flatnonzero(rows["label"] == 0)  # 50 photos, 10 video frames
    assert blend_probabilities(rows, blendable, "crop") is None
    shares = blend_probabilities(rows, blendable, "source")
    assert np.isclose(shares.sum(), 1.0) and np.isclose(shares[:50].sum(), 0.5)
    for bases, photo_share in (("crop", 50 / 60), ("source", 0.5)):
        sampler = PairSampler(rows, seed=0, sbi=0.5, blendable=blendable,
                              blend_p=blend_probabilities(rows, blendable, bases))
        bases_drawn = []
        for epoch in range(100):  # 10 blends an epoch beside the 10 fakes of the data
            sampler.set_epoch(epoch)
            order = np.array(list(sampler))
            bases_drawn += order[1::2][order[0::2] >= len(rows)].tolist()
        bases_drawn = np.array(bases_drawn)
        assert abs(np.mean(bases_drawn < 50) - photo_share) < 0.04, bases
    with pytest.raises(ValueError, match="choose one of"):
        blend_probabilities(rows, blendable, "person")
    config = {"num_classes": 1, "sampler": "pairs", "sbi": {"p": 0.5, "bases": "source"}}
    check_sbi(config, Path("run.yaml"))
    config["sbi"]["bases"] = "person"
    with pytest.raises(ValueError, match=r"^run.yaml: sbi is .*optionally with bases: one of \('crop', 'source'\)"):
        check_sbi(config, Path("run.yaml"))


def test_sbi_bases_by_source_hold_when_every_fake_is_a_blend_and_in_the_balanced_sampler():
    rows = pd.DataFrame({"label": 0, "video": [f"v{i}" for i in range(60)], "frame": 0, "original": "",
                         "box": "10 10 60 70", "source": ["photos"] * 50 + ["videos"] * 10})
    blendable = np.arange(60)
    blend_p = blend_probabilities(rows, blendable, "source")
    order = np.array(list(PairSampler(rows, seed=0, size=4000, sbi=1.0, blendable=blendable, blend_p=blend_p)))
    assert len(order) == 4000 and (order[0::2] == order[1::2] + len(rows)).all()
    assert abs(np.mean(order[1::2] < 50) - 0.5) < 0.04
    labels = np.zeros(60)
    drawn = np.array(list(BalancedSampler(labels, seed=0, size=4000, sbi=1.0, blendable=blendable, blend_p=blend_p)))
    blends = drawn[drawn >= len(labels)] - len(labels)
    assert abs(np.mean(blends < 50) - 0.5) < 0.05


def test_balanced_sampler_blends_its_share_of_the_fakes(tmp_path):
    labels = np.array([0] * 50 + [1] * 50)
    blendable = np.arange(50)
    drawn = np.array(list(BalancedSampler(labels, seed=0, size=4000, sbi=0.25, blendable=blendable)))
    fakes = drawn[(drawn >= 100) | (labels[np.minimum(drawn, 99)] == 1)]
    assert abs(np.mean(fakes >= 100) - 0.25) < 0.04
    only_reals = np.array(list(BalancedSampler(np.zeros(50), seed=0, size=1000, sbi=0.25, blendable=blendable)))
    assert abs(np.mean(only_reals >= 50) - 0.5) < 0.06  # no fake crops: every fake draw is a blend
    with pytest.raises(ValueError, match="every class"):
        BalancedSampler(np.zeros(10))


def test_self_blended_face_changes_only_pixels_under_a_mask_inside_the_face_box():
    crop = face_like(130, 104)
    points = np.array([[38, 52], [66, 52], [52, 68], [41, 82], [63, 82]], dtype=np.float32)
    box = face_box(crop.shape[:2], 0.3)
    assert box == (20, 24, 85, 105)  # the 65x81 face box a 0.3 margin widened to 104x130
    changed_somewhere = False
    for seed in range(20):
        blended, mask = self_blend(crop, points, 0.3, np.random.default_rng(seed))
        assert blended.shape == crop.shape and blended.dtype == np.uint8
        outside = np.ones(crop.shape[:2], bool)
        outside[box[1]:box[3], box[0]:box[2]] = False
        assert not mask[outside].any()
        assert np.array_equal(blended[mask == 0], crop[mask == 0])
        assert mask.max() > 0.2
        changed_somewhere |= bool(np.abs(blended.astype(int) - crop.astype(int)).max() > 10)
    assert changed_somewhere
    again, _ = self_blend(crop, points, 0.3, np.random.default_rng(3))
    assert np.array_equal(again, self_blend(crop, points, 0.3, np.random.default_rng(3))[0])


def per_pixel_colour_shift(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`colour_shift` written pixel by pixel in float32, as it was before its lookup tables."""
    image = crop.astype(np.float32)
    shifted = image + rng.uniform(-20, 20, 3).astype(np.float32) * (rng.random() < 0.3)
    hsv = cv2.cvtColor(np.clip(shifted, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
    hsv[..., 1:] *= rng.uniform(0.85, 1.15, 2).astype(np.float32)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    mean = out.mean()
    return (out - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.9, 1.1)


def test_colour_shift_lookup_tables_equal_the_per_pixel_arithmetic():
    crop = np.random.default_rng(7).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    for seed in range(40):  # 40 draws: the +/-20 channel shift (p 0.3) is on in about 12
        fast = colour_shift(crop, np.random.default_rng(seed))
        assert fast.dtype == np.float32
        assert np.array_equal(fast, per_pixel_colour_shift(crop, np.random.default_rng(seed)))


def test_blend_mask_follows_the_landmarks():
    points = np.array([[38, 52], [66, 52], [52, 68], [41, 82], [63, 82]], dtype=np.float32)
    mask = blend_mask((130, 104), points, (0, 0, 104, 130), np.random.default_rng(0))
    assert mask[68, 52] > 0.5 * mask.max()  # the nose is inside
    assert max(mask[5, 5], mask[125, 100]) < 0.05 * mask.max()  # corners are not


def test_class_weights_keep_the_smoothed_optimum_of_each_class():
    """Per-sample class weights: a real crop's best output stays at the smoothed target s/2 (pos_weight moved it)."""
    smoothing = 0.1
    loss = BinaryLoss(smoothing, torch.tensor([0.2, 5.0]))
    for label, best in ((0.0, smoothing / 2), (1.0, 1 - smoothing / 2)):
        logit = torch.full((4, 1), float(np.log(best / (1 - best))), requires_grad=True)
        loss(logit, torch.full((4,), label)).backward()
        assert abs(float(logit.grad.abs().max())) < 1e-6
    pos_weighted = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([5.0]))
    logit = torch.full((4,), float(np.log(0.05 / 0.95)), requires_grad=True)
    pos_weighted(logit, torch.full((4,), smoothing / 2)).backward()
    assert abs(float(logit.grad.abs().max())) > 1e-3  # the old pos_weight loss did move it


def test_class_weights_weigh_each_class_equally():
    config = {"label_smoothing": 0.0, "num_classes": 1, "class_weights": True}
    criterion = build_loss(config, np.array([0] * 20 + [1] * 80), torch.device("cpu"))
    logits = torch.tensor([[2.0], [-1.0], [0.5], [0.3], [1.0]])
    labels = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0])
    per_sample = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels, reduction="none")
    expected = (per_sample[0] * 2.5 + per_sample[1:].sum() * 0.625) / (2.5 + 4 * 0.625)
    assert float(criterion(logits, labels)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("arch,size", [("tf_efficientnet_lite0", 96), ("efficientnet_b0", 96), ("resnet18", 96),
                                       ("legacy_xception", 96)])
@pytest.mark.parametrize("sampler,num_classes,share", [("balanced", 1, 0.5), ("shuffle", 1, 0.75),
                                                       ("balanced", 3, None)])
@pytest.mark.slow
def test_first_batch_loss_is_the_entropy_of_the_sampled_share(arch, size, sampler, num_classes, share):
    torch.manual_seed(0)
    config = {"arch": arch, "num_classes": num_classes, "pretrained": None, "sampler": sampler,
              "class_weights": False, "label_smoothing": 0.0}
    if num_classes == 1:
        labels = np.array([1] * int(share * 8) + [0] * (8 - int(share * 8)))
        entropy = -(share * np.log(share) + (1 - share) * np.log(1 - share))
    else:
        labels, entropy = np.arange(9) % 3, np.log(3)
    model = build_model(config, labels).eval()
    images = torch.randn(len(labels), 3, size, size)
    criterion = build_loss(config, labels, torch.device("cpu"))
    with torch.no_grad():
        loss = float(criterion(model(images), torch.as_tensor(labels, dtype=torch.float32)))
    assert abs(loss - entropy) < 0.1


def test_a_fake_without_its_original_is_paired_with_a_real_of_its_person_or_at_least_its_source(tmp_path):
    """FF++ crops beside many real photos: pairing their fakes with any real would let "looks like an FF++ crop"
    explain the label; a fake is paired with a real of the same estimated person, else of the same source."""
    specs = [(f"photos/r{i}.jpg", 0, "", 0) for i in range(20)]
    specs += [(f"ffpp/real{i}.jpg", 0, "", 0) for i in range(3)] + [(f"ffpp/fake{i}.jpg", 1, "", 0) for i in range(4)]
    rows = crop_rows(tmp_path, specs)
    rows["source"] = ["photos"] * 20 + ["ffpp"] * 7
    rows["ffpp_id_estimate"] = [""] * 20 + ["101", "102", "103", "101", "101", "102", "999"]
    sampler = PairSampler(rows, seed=0, person_columns=("ffpp_id_estimate",))
    for epoch in range(5):
        sampler.set_epoch(epoch)
        pairs = np.array(list(sampler)).reshape(-1, 2)
        partner_of = {rows["video"][fake]: rows["video"][real] for fake, real in pairs}
        assert partner_of["ffpp/fake0.jpg"] == partner_of["ffpp/fake1.jpg"] == "ffpp/real0.jpg"
        assert partner_of["ffpp/fake2.jpg"] == "ffpp/real1.jpg"
        assert partner_of["ffpp/fake3.jpg"].startswith("ffpp/real")  # no real of person 999: its source's
    plain = PairSampler(rows.drop(columns=["source", "ffpp_id_estimate"]), seed=0)
    partners = {rows["video"][real] for _, real in np.array(list(plain)).reshape(-1, 2)}
    assert any(name.startswith("photos/") for name in partners)  # without sources: any real, as before
