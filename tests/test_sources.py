"""Several data sources in one run: labelled folders with metadata.csv beside DFDC parts, one index, one set of
group folds, estimated person ids, stills padded by their edges, and no item lost on the way."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from dfdc_core.faces import crop_window
from dfdc_core.video import decode_video, pad_still
from kernel.config import load_config
from tests.helpers import faces_clip, lfw_face, write_video
from training.data.extract_faces import run_extraction
from training.data.folds import (
    DEFAULT_LINK_RULES,
    DEFAULT_PERSON_IDS,
    assign_folds,
    check_folds,
    fold_links,
    id_blocks,
    read_link_rules,
    read_person_ids,
    videos_from_index,
)
from training.data.index import INDEX_COLUMNS, read_index
from training.data.sources import collect_sources
from training.folds import main as folds_main
from training.pipelines.recipe import make_folds
from training.train_fold import main as train_main


def photo(face: int, size: int = 200) -> np.ndarray:
    """A photo with one LFW face on a textured background, face well inside the frame."""
    rng = np.random.default_rng(face)
    canvas = rng.integers(60, 120, (size + 120, size + 80, 3), dtype=np.uint8)
    canvas[60:60 + size, 40:40 + size] = lfw_face(face, size)
    return canvas


def write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_dfdc(folder: Path) -> Path:
    """A DFDC part: two real clips and a fake of each."""
    folder.mkdir(parents=True)
    metadata = {}
    for seed in range(2):
        write_video(folder / f"real{seed}.mp4", faces_clip(4, seed=seed), fps=10)
        write_video(folder / f"fake{seed}.mp4", faces_clip(4, swap_right=True, seed=seed), fps=10)
        metadata[f"real{seed}.mp4"] = {"label": "REAL"}
        metadata[f"fake{seed}.mp4"] = {"label": "FAKE", "original": f"real{seed}.mp4"}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def write_photos(folder: Path) -> Path:
    """A real/-only folder of six photos in three groups (two photos of each person), with a metadata.csv."""
    rows = []
    for number in range(6):
        write_image(folder / "real" / f"p{number}.jpg", photo(number))
        rows.append({"file": f"real/p{number}.jpg", "label": "REAL", "group": f"person{number // 2}",
                     "method": "original", "camera": f"cam{number % 2}"})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    dfdc, photos = write_dfdc(root / "dfdc_part"), write_photos(root / "photos")
    index, problems = run_extraction([dfdc, photos], root / "crops", frames=2, progress=False)
    return root, dfdc, photos, index, problems


def test_two_sources_make_one_index_with_source_group_and_method(two_sources):
    root, _, _, index, problems = two_sources
    assert problems.empty, problems
    assert list(index.columns) == INDEX_COLUMNS + ["camera"]
    videos = index.drop_duplicates("video").set_index("video")
    assert sorted(videos.index) == ["fake0.mp4", "fake1.mp4", "photos/real/p0.jpg", "photos/real/p1.jpg",
                                    "photos/real/p2.jpg", "photos/real/p3.jpg", "photos/real/p4.jpg",
                                    "photos/real/p5.jpg", "real0.mp4", "real1.mp4"]
    assert videos.loc["photos/real/p3.jpg", ["source", "group", "method", "camera", "label"]].tolist() == \
        ["photos", "person1", "original", "cam1", 0]
    assert videos.loc["fake1.mp4", ["source", "group", "original", "label"]].tolist() == \
        ["dfdc_part", "", "real1.mp4", 1]
    assert (index.loc[index["source"] == "photos", "frame"] == 0).all()
    again = read_index(root / "crops" / "index.csv")
    assert again["camera"].tolist() == index["camera"].tolist() and again["group"].tolist() == index["group"].tolist()


def test_one_set_of_folds_over_both_sources_keeps_every_group_together(two_sources, tmp_path):
    root, dfdc, photos, _, _ = two_sources
    folds = make_folds(root / "crops", tmp_path, 2, 0)
    assert set(folds["source"]) == {"dfdc_part", "photos"} and len(folds) == 10
    check_folds(folds)
    photos_folds = folds[folds["source"] == "photos"].assign(person=lambda t: t["video"].str[-5].astype(int) // 2)
    assert (photos_folds.groupby("person")["fold"].nunique() == 1).all()
    assert (photos_folds.groupby("person")["group"].nunique() == 1).all()
    assert folds.set_index("video").loc["fake0.mp4", "fold"] == folds.set_index("video").loc["real0.mp4", "fold"]
    assert all(rows["source"].nunique() == 2 for _, rows in folds.groupby("fold"))  # stratified by source too
    out = tmp_path / "cli_folds.csv"
    assert folds_main(["--data", str(dfdc), "--data", str(photos), "--k", "2", "--out", str(out)]) == 0
    from_metadata = pd.read_csv(out, keep_default_na=False)
    assert sorted(from_metadata["video"]) == sorted(folds["video"])
    check_folds(from_metadata)


def test_unusable_rows_are_problems_never_a_crash(tmp_path, caplog):
    root = tmp_path / "faces"
    write_image(root / "real" / "ok.png", photo(0))
    write_image(root / "fake" / "swapped.png", photo(1))
    write_image(root / "elsewhere" / "listed.png", photo(2))
    (root / "metadata.csv").write_text(
        "file,label,method\n"
        "real/ok.png,REAL,original\n"
        "real/gone.png,REAL,original\n"          # missing file
        "fake/swapped.png,MAYBE,df\n"            # unknown label
        "real/ok.png,REAL,original\n"            # listed twice
        "../outside.png,FAKE,df\n"               # outside the source
        "real/ok.png,FAKE,df\n"                  # listed again with another label
        "elsewhere/listed.png,1,fs\n")           # a file outside real/ fake/ with a 0/1 label
    caplog.set_level(logging.WARNING)
    index, problems = run_extraction(root, tmp_path / "out", progress=False)
    found = set(zip(problems["video"], problems["status"]))
    assert {("real/gone.png", "missing_file"), ("fake/swapped.png", "bad_label"), ("real/ok.png", "duplicate"),
            ("../outside.png", "outside_source")} <= found
    assert set(problems["source"]) == {"faces"}
    assert sorted(index["video"].unique()) == ["faces/elsewhere/listed.png", "faces/real/ok.png"]
    labels = index.drop_duplicates("video").set_index("video")["label"]
    assert labels.to_dict() == {"faces/elsewhere/listed.png": 1, "faces/real/ok.png": 0}
    assert "'MAYBE'" in caplog.text and "remove the line" in caplog.text


def test_a_label_that_contradicts_its_folder_is_refused(tmp_path):
    root = tmp_path / "faces"
    write_image(root / "real" / "a.png", photo(0))
    (root / "metadata.csv").write_text("file,label\nreal/a.png,FAKE\n")
    with pytest.raises(FileNotFoundError, match="hold no images"):
        collect_sources([root])
    write_image(root / "real" / "b.png", photo(1))
    items, problems = collect_sources([root])
    assert [item.video for item in items] == ["faces/real/b.png"]
    assert [(p.video, p.status) for p in problems] == [("real/a.png", "label_conflict")]
    assert "move the file or fix its label" in problems[0].message


def test_sources_need_distinct_names_and_keys(tmp_path):
    first, second = write_dfdc(tmp_path / "a" / "part"), write_dfdc(tmp_path / "b" / "part")
    with pytest.raises(ValueError, match="two sources are named 'part'"):
        collect_sources([first, second])
    (tmp_path / "b" / "part").rename(tmp_path / "b" / "other")
    with pytest.raises(ValueError, match="video 'fake0.mp4' is in both"):
        collect_sources([first, tmp_path / "b" / "other"])
    (tmp_path / "c.csv").write_text("")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metadata.csv").write_text("name,kind\nx.png,REAL\n")
    with pytest.raises(ValueError, match="no 'file' or 'label' column"):
        collect_sources([tmp_path / "bad"])


@pytest.mark.slow
def test_same_stems_and_sub_folder_names_each_keep_their_own_crops(tmp_path):
    """Every item ends in the index or in problems.csv, with a crop folder of its own."""
    images = tmp_path / "images"
    write_image(images / "real" / "face.jpg", photo(0))
    write_image(images / "real" / "face.png", photo(1))
    write_image(images / "real" / "nested" / "face.png", photo(2))
    part = tmp_path / "part"
    write_video(part / "sub" / "i.mp4", faces_clip(3), fps=10)
    (part / "metadata.json").write_text(json.dumps({"sub/i.mp4": {"label": "REAL"}}))
    index, problems = run_extraction([images, part], tmp_path / "out", frames=2, progress=False)
    assert problems.empty
    assert sorted(index["video"].unique()) == ["images/real/face.jpg", "images/real/face.png",
                                               "images/real/nested/face.png", "sub/i.mp4"]
    folders = index.groupby("video")["path"].agg(lambda paths: {str(Path(p).parent) for p in paths})
    assert all(len(f) == 1 for f in folders) and len(set.union(*folders)) == 4


def test_a_lost_or_empty_crop_is_extracted_again(tmp_path, caplog):
    images = tmp_path / "images"
    for number in range(2):
        write_image(images / "real" / f"f{number}.png", photo(number))
    index, _ = run_extraction(images, tmp_path / "out", progress=False)
    broken = tmp_path / "out" / index["path"].iloc[0]
    broken.write_bytes(b"")
    caplog.set_level(logging.INFO, logger="extract_faces")
    run_extraction(images, tmp_path / "out", progress=False)
    assert "1 already done, 1 to extract" in caplog.text
    assert cv2.imread(str(broken)) is not None


def tight_still(face: int = 0, size: int = 160) -> np.ndarray:
    """A face photo cut tight: the face fills the image, as in the FF++ crops and UTKFace."""
    return lfw_face(face, size)


def test_a_tight_still_is_padded_by_its_edges_so_its_crop_has_no_black_margin(tmp_path):
    """The old behaviour zero-padded the margin a tight still has no room for: a black frame no video crop shows.
    Now the still is padded by repeating its edge pixels before detection, in training and in the kernel alike."""
    image = tight_still()
    write_image(tmp_path / "stills" / "real" / "tight.png", image)
    index, problems = run_extraction(tmp_path / "stills", tmp_path / "out", progress=False)
    assert problems.empty and len(index) == 1
    crop = cv2.imread(str(tmp_path / "out" / index["path"].iloc[0]))
    left, top, right, bottom = crop_window(tuple(map(float, index["box"].iloc[0].split())), 0.3)
    assert crop.shape[:2] == (bottom - top, right - left)
    pad = round(load_config()["still_pad"] * 160)
    assert left < pad and top < pad  # the crop window runs past the original image...
    border = np.concatenate([crop[:4].reshape(-1, 3), crop[-4:].reshape(-1, 3), crop[:, :4].reshape(-1, 3),
                             crop[:, -4:].reshape(-1, 3)])
    assert (border.max(axis=1) == 0).mean() < 0.01  # ...yet no black pixel frames it
    frames, numbers = decode_video(tmp_path / "stills" / "real" / "tight.png", load_config())
    assert frames.shape == (1, 160 + 2 * pad, 160 + 2 * pad, 3) and numbers.tolist() == [0]
    assert np.array_equal(frames[0, pad:-pad, pad:-pad], image)
    assert np.array_equal(frames[0, 0, 0], image[0, 0]) and np.array_equal(frames[0, -1, pad + 5], image[-1, 5])


def test_pad_still_repeats_the_edges_and_zero_leaves_the_image_alone():
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(1, 2, 4, 3)
    padded = pad_still(image, 0.5)
    assert padded.shape == (1, 6, 8, 3)
    assert np.array_equal(padded[0, :2, 2:6], np.repeat(image[0, :1], 2, axis=0))
    assert np.array_equal(padded[0, 2:4, :2], np.repeat(image[0, :, :1], 2, axis=1))
    assert pad_still(image, 0.0) is image


def test_id_blocks_cut_runs_and_mark_the_ids_near_each_cut():
    estimates = np.concatenate([np.arange(100, 300), np.arange(400, 411), [420]])
    blocks, near_cut = id_blocks(estimates, tolerance=3, block=100)
    by_id = dict(zip(estimates.tolist(), zip(blocks.tolist(), near_cut.tolist())))
    # run 100..299: two blocks cut at 200; a gap of 101 > 6 ends it; 400..410 and 420 (gap 10 > 6): one block each
    assert [by_id[i][0] for i in (100, 199, 200, 299, 400, 410, 420)] == [0, 0, 1, 1, 2, 2, 3]
    assert sorted(i for i, (_, cut) in by_id.items() if cut) == [197, 198, 199, 200, 201, 202]


def test_estimated_person_ids_never_put_one_person_in_two_folds_or_beside_a_video_of_them():
    """Items whose ids may be one person (within 2 x 3) share a fold; those that may be a person a dev video
    names exactly (ffc40_yt_183.mp4) are left out, as are those on a cut between blocks."""
    rng = np.random.default_rng(0)
    true_ids = np.repeat(np.arange(100, 560), 2)
    estimates = np.clip(true_ids + rng.integers(-3, 4, len(true_ids)), 100, 559)
    videos = pd.DataFrame({"video": [f"ffpp/{n}.jpg" for n in range(len(estimates))], "label": n_labels(len(estimates)),
                           "original": "", "source": "ffpp", "group": "",
                           "ffpp_id_estimate": [str(e) for e in estimates]})
    dev = pd.DataFrame({"video": ["ffc40_yt_183.mp4", "ffc40_df_183_253.mp4", "ffc40_yt_253.mp4"],
                        "label": [0, 1, 0], "original": "", "source": "videos", "group": "", "ffpp_id_estimate": ""})
    table = pd.concat([videos, dev], ignore_index=True)
    links, left_out = fold_links(table, read_link_rules(DEFAULT_LINK_RULES), read_person_ids(DEFAULT_PERSON_IDS))
    left = set(left_out["video"])
    near_dev = {v for v, e in zip(videos["video"], estimates) if min(abs(e - 183), abs(e - 253)) <= 3}
    assert near_dev <= left and not left & set(dev["video"])
    assert left_out["reason"].str.contains("may be ffpp:183").any()
    assert left_out["reason"].str.contains("of a cut").any() and len(left) < 0.15 * len(videos)
    folds = assign_folds(table[~table["video"].isin(left)], 4, 0, links)
    fold_of = dict(zip(folds["video"], folds["fold"]))
    kept = [(fold_of[v], t) for v, t in zip(videos["video"], true_ids) if v in fold_of]
    by_person: dict[int, set[int]] = {}
    for fold, person in kept:
        by_person.setdefault(person, set()).add(fold)
    assert all(len(f) == 1 for f in by_person.values())
    assert len({fold_of[v] for v in dev["video"]}) == 1


def n_labels(count: int) -> list[int]:
    return [number % 3 == 0 for number in range(count)]


def test_person_id_rules_are_checked(tmp_path):
    path = tmp_path / "ids.yaml"
    path.write_text(yaml.safe_dump([{"column": "x", "namespace": "n", "tolerance": 3, "block": 6}]))
    with pytest.raises(ValueError, match="block: M > 2N"):
        read_person_ids(path)


@pytest.mark.slow
def test_a_real_only_folder_trains_with_self_blending_and_without_landmarks_is_refused(tmp_path, two_sources):
    """A folder of real photos alone is a training set: every fake is self-blended. Crops without landmarks cannot
    be blended: refused with a message naming the fix."""
    from tests.helpers import TINY_MODELS

    root, _, photos, _, _ = two_sources
    crops = tmp_path / "crops"
    run_extraction(photos, crops, progress=False)
    make_folds(crops, crops, 2, 0)
    arch, size = TINY_MODELS[0]
    config = {"arch": arch, "input_size": size, "crops": str(crops), "out": str(tmp_path / "runs"), "epochs": 1,
              "batch_size": 4, "num_workers": 0, "device": "cpu", "sampler": "pairs", "sbi": {"p": 1.0},
              "samples_per_epoch": 8, "validate_every": 0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert train_main(["--config", str(tmp_path / "config.yaml"), "--fold", "0"]) in (None, 0)
    oof = pd.read_csv(tmp_path / "runs" / f"{arch}_fold0" / "oof.csv")
    assert oof["video"].str.startswith("photos/real/").all() and (oof["label"] == 0).all()
    metrics = pd.read_csv(tmp_path / "runs" / f"{arch}_fold0" / "metrics.csv")
    assert metrics["val_loss"].notna().all()  # validate_every 0: the export's OOF predictions fill the metrics
    index = read_index(crops / "index.csv")
    index.assign(landmarks="").to_csv(crops / "index.csv", index=False)
    with pytest.raises(ValueError, match="has landmarks; re-run"):
        train_main(["--config", str(tmp_path / "config.yaml"), "--fold", "1"])
    assert videos_from_index(crops / "index.csv")["source"].eq("photos").all()
