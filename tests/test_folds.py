"""Group folds: no original/fake group is ever split, on the real DFDC metadata and on generated data."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from training.data.folds import (
    DEFAULT_LINK_RULES,
    assign_folds,
    check_folds,
    connected_groups,
    name_links,
    read_link_rules,
    rule_links,
    videos_from_metadata,
)
from training.folds import main as folds_main


def assert_leak_free(table: pd.DataFrame) -> None:
    """Independent of `check_folds`: fakes sit with their original and with every fake of that original."""
    fold_of = dict(zip(table["video"], table["fold"]))
    fakes = table[table["label"] == 1]
    for original, siblings in fakes.groupby("original"):
        if not original:
            continue
        assert siblings["fold"].nunique() == 1, f"fakes of {original} split over folds"
        if original in fold_of:
            assert fold_of[original] == siblings["fold"].iloc[0], f"{original} apart from its fakes"
    assert (table["fold"] >= 0).all()


def generated_videos(seed: int) -> pd.DataFrame:
    """DFDC-like data: reals, fakes of them, fakes of originals not listed, FF++-style X<->Y swaps."""
    rng = np.random.default_rng(seed)
    reals = [f"r{i}.mp4" for i in range(rng.integers(8, 30))]
    absent = [f"gone{i}.mp4" for i in range(3)]
    rows = [{"video": r, "label": 0, "original": ""} for r in reals]
    for number in range(rng.integers(20, 80)):
        pool = reals if rng.random() < 0.85 else absent
        rows.append({"video": f"f{number}.mp4", "label": 1, "original": str(rng.choice(pool))})
    for a, b in zip(reals[:4:2], reals[1:4:2]):
        rows += [{"video": f"swap_{a}_{b}", "label": 1, "original": a},
                 {"video": f"swap_{b}_{a}", "label": 1, "original": b}]
    return pd.DataFrame(rows)


def test_real_dfdc_metadata_folds_are_leak_free_and_stratified(dev_data):
    videos = videos_from_metadata([dev_data / "dfdc_format" / "train_sample_videos_metadata.json"])
    assert len(videos) == 400 and videos["label"].sum() == 323
    table = assign_folds(videos, k=5, seed=0)
    assert_leak_free(table)
    assert table["fold"].nunique() == 5
    assert all(rows["label"].nunique() == 2 for _, rows in table.groupby("fold"))


FFPP_PATTERN = r"ffc(?P<q>\d+)_(?:df|f2f|fs|nt)_(?P<a>\d+)_(?P<b>\d+)\.mp4"
FFPP_LINKS = ["ffc{q}_yt_{a}.mp4", "ffc{q}_yt_{b}.mp4"]


def test_dev_video_pairs_that_swap_both_ways_form_one_group(dev_data):
    videos = videos_from_metadata([dev_data / "videos" / "metadata.json"])
    by_metadata = dict(zip(videos["video"], connected_groups(videos["video"], videos["original"])))
    assert by_metadata["ffc40_yt_183.mp4"] == by_metadata["ffc40_df_183_253.mp4"]
    assert by_metadata["ffc40_df_183_253.mp4"] == by_metadata["ffc40_f2f_253_183.mp4"]
    table = assign_folds(videos, k=3, extra_links=name_links(videos["video"], FFPP_PATTERN, FFPP_LINKS))
    group = dict(zip(table["video"], table["group"]))
    assert group["ffc40_yt_183.mp4"] == group["ffc40_yt_253.mp4"] == group["ffc40_df_183_253.mp4"]
    assert group["ffc23_yt_519.mp4"] == group["ffc23_df_519_515.mp4"] != group["ffc40_yt_183.mp4"]
    assert "unlabelled_multiface_demo.mp4" not in group
    assert_leak_free(table)


@pytest.mark.parametrize("seed", range(25))
def test_generated_groups_never_cross_folds(seed):
    table = assign_folds(generated_videos(seed), k=int(np.random.default_rng(seed).integers(2, 6)), seed=seed)
    assert_leak_free(table)
    fakes_of_absent = table[table["original"].str.startswith("gone")]
    assert fakes_of_absent.groupby("original")["fold"].nunique().max() == 1


def test_connected_groups_join_chains_and_absent_originals():
    groups = connected_groups(pd.Series(["a", "b", "c", "d", "e"]), pd.Series(["", "a", "x", "x", ""]))
    assert groups[0] == groups[1] and groups[2] == groups[3]
    assert len({groups[0], groups[2], groups[4]}) == 3


def test_check_folds_names_the_first_five_split_groups():
    table = fold_table([""] * 14, [g for g in range(7) for _ in range(2)], [0, 1] * 7)
    with pytest.raises(AssertionError, match=r"^groups split across folds: \[0, 1, 2, 3, 4\]$"):
        check_folds(table)


def test_check_folds_rejects_a_split_group():
    table = pd.DataFrame({"video": ["a", "b"], "label": [0, 1], "original": ["", "a"], "group": [0, 0], "fold": [0, 1]})
    with pytest.raises(AssertionError, match="split across folds"):
        check_folds(table)


def fold_table(original: list[str], group: list[int], fold: list[int]) -> pd.DataFrame:
    """Videos a, b, c, ... with these originals, groups and folds (label 1 where an original is named)."""
    videos = [chr(ord("a") + i) for i in range(len(fold))]
    return pd.DataFrame({"video": videos, "label": [int(bool(o)) for o in original], "original": original,
                         "group": group, "fold": fold})


def test_check_folds_rejects_a_video_without_a_fold():
    table = fold_table(["", "a", "", "", "", "", ""], [0, 0, 1, 2, 3, 4, 5], [0, 0, -1, 1, -2, -1, 2])
    with pytest.raises(AssertionError, match=r"^videos without a fold: \['c', 'e', 'f'\]$"):
        check_folds(table)
    with pytest.raises(AssertionError, match=r"^videos without a fold: \['a', 'b', 'c', 'd', 'e'\]$"):
        check_folds(table.assign(fold=-1))  # the first five named
    check_folds(table.assign(fold=[0, 0, 1, 1, 2, 0, 1]))  # fold 0 is a fold


def test_check_folds_rejects_an_original_apart_from_its_fake_whatever_the_group_column_says():
    table = fold_table(["", "a", "a", ""], [0, 1, 2, 3], [0, 0, 1, 1])  # b and c wrongly in groups of their own
    with pytest.raises(AssertionError, match=r"^c is in fold 1 but its original a in fold 0$"):
        check_folds(table)
    check_folds(table.assign(fold=[1, 1, 1, 0]))
    check_folds(fold_table(["", "gone", "gone"], [0, 1, 1], [0, 1, 1]))  # an absent original has no fold


def test_check_folds_rejects_videos_a_link_rule_joins_in_two_folds():
    table = pd.DataFrame({"video": ["c_x_0.mp4", "c_x_1.mp4", "x.mp4"], "label": [1, 1, 0], "original": ["", "", ""],
                          "group": [0, 1, 2], "fold": [0, 1, 1]})
    links = name_links(table["video"], r"c_(?P<v>[a-z])_\d\.mp4", ["{v}.mp4"])
    with pytest.raises(AssertionError, match=r"^c_x_0.mp4 \(fold 0\) and x.mp4 \(fold 1\) share a source by the "
                                             r"link rules but sit in different folds$"):
        check_folds(table, links)
    with pytest.raises(AssertionError, match="linked to x.mp4 sit in different folds"):
        check_folds(table.iloc[:2], links)
    check_folds(table.assign(fold=[1, 1, 1]), links)


def test_default_link_rules_keep_the_dev_crop_clips_of_one_video_together(dev_data):
    """dfdccrop_0_aejvkfbtxs_0_0 and _0_1 are cut from one DFDC video (no `original`): one group, one fold."""
    videos = videos_from_metadata([dev_data / "videos" / "metadata.json"])
    links = rule_links(videos["video"], read_link_rules(DEFAULT_LINK_RULES))
    for seed in range(5):
        table = assign_folds(videos, k=4, seed=seed, extra_links=links)
        fold = dict(zip(table["video"], table["fold"]))
        group = dict(zip(table["video"], table["group"]))
        assert fold["dfdccrop_0_aejvkfbtxs_0_0.mp4"] == fold["dfdccrop_0_aejvkfbtxs_0_1.mp4"]
        assert group["ffc40_yt_183.mp4"] == group["ffc40_yt_253.mp4"] == group["ffc40_df_183_253.mp4"]
    assert group["dfdccrop_0_aejvkfbtxs_0_0.mp4"] != group["dfdccrop_0_aaqaifqrwn_0_0.mp4"]


def test_too_many_folds_is_a_clear_error():
    with pytest.raises(ValueError, match="number of groups"):
        assign_folds(pd.DataFrame({"video": ["a", "b"], "label": [0, 1], "original": ["", "a"]}), k=2)


def test_cli_writes_the_csv_training_reads(tmp_path):
    metadata = tmp_path / "metadata.json"
    videos = generated_videos(1)
    entries = {video: {"label": "FAKE" if label else "REAL", "original": original or None}
               for video, label, original in zip(videos["video"], videos["label"], videos["original"])}
    metadata.write_text(json.dumps(entries))
    folds_main(["--metadata", str(metadata), "--k", "4", "--out", str(tmp_path / "folds.csv")])
    table = pd.read_csv(tmp_path / "folds.csv", keep_default_na=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text("[{pattern: 'swap_r\\d+\\.mp4_(?P<b>r\\d+)\\.mp4', link_to: ['{b}.mp4']}]")  # also the second identity
    folds_main(["--metadata", str(metadata), "--k", "4", "--out", str(tmp_path / "folds2.csv"), "--links", str(rules)])
    linked = pd.read_csv(tmp_path / "folds2.csv", keep_default_na=False)
    fold = dict(zip(linked["video"], linked["fold"]))
    assert all(fold[v] == fold[v.split(".mp4_")[1]]
               for v in linked["video"] if v.startswith("swap_"))
    assert list(table.columns) == ["video", "label", "original", "source", "group", "fold"]
    assert len(table) == len(videos)
    assert_leak_free(table)


def write_index(path, rows: list[tuple[str, int, str]], crops_per_video: int = 2) -> None:
    """An extract_faces.py index.csv: `crops_per_video` crops of each (video, label, original)."""
    from training.data.index import INDEX_COLUMNS

    lines = [{"video": video, "frame": frame, "person": 0, "label": label, "original": original, "part": "p",
              "path": f"crops/{video}_{frame}.png", "box": "0 0 10 10", "score": 0.99, "landmarks": ""}
             for video, label, original in rows for frame in range(crops_per_video)]
    pd.DataFrame(lines, columns=INDEX_COLUMNS).to_csv(path, index=False)


def test_cli_makes_folds_from_an_index(tmp_path):
    """`training/folds.py --index`: one row per video of the crops' index, a fake with its original."""
    rows = [(f"r{i}.mp4", 0, "") for i in range(6)] + [(f"f{i}.mp4", 1, f"r{i}.mp4") for i in range(6)]
    write_index(tmp_path / "index.csv", rows)
    folds_main(["--index", str(tmp_path / "index.csv"), "--k", "3", "--out", str(tmp_path / "folds.csv")])
    table = pd.read_csv(tmp_path / "folds.csv", keep_default_na=False)
    assert sorted(table["video"]) == sorted(video for video, _, _ in rows)  # one row per video, not per crop
    fold = dict(zip(table["video"], table["fold"]))
    assert all(fold[f"f{i}.mp4"] == fold[f"r{i}.mp4"] for i in range(6)) and set(fold.values()) == {0, 1, 2}
    assert_leak_free(table)


def test_methods_cli_writes_the_method_column_from_the_names(tmp_path):
    """`python -m training.methods`: into the index itself by default, or `--out`; `--unmatched label`."""
    from training.data.index import read_index
    from training.methods import main as methods_main

    rows = [("ffc40_yt_1.mp4", 0, ""), ("ffc40_df_1_2.mp4", 1, "ffc40_yt_1.mp4"), ("ffc40_f2f_1_2.mp4", 1, ""),
            ("x_fs_3.mp4", 1, ""), ("nt_4.mp4", 1, ""), ("ffc40_actor_07.mp4", 0, ""), ("aabb.mp4", 1, "")]
    index = tmp_path / "index.csv"
    write_index(index, rows)
    methods_main(["--index", str(index)])
    methods = read_index(index).drop_duplicates("video").set_index("video")["method"].to_dict()
    assert methods == {"ffc40_yt_1.mp4": "real", "ffc40_df_1_2.mp4": "Deepfakes", "ffc40_f2f_1_2.mp4": "Face2Face",
                       "x_fs_3.mp4": "FaceSwap", "nt_4.mp4": "NeuralTextures", "ffc40_actor_07.mp4": "real",
                       "aabb.mp4": ""}
    methods_main(["--index", str(index), "--out", str(tmp_path / "other.csv"), "--unmatched", "label",
                  "--column", "attribution"])
    other = read_index(tmp_path / "other.csv")
    assert len(other) == 2 * len(rows) and set(other.loc[other["video"] == "aabb.mp4", "attribution"]) == {"fake"}


def test_cli_refuses_unusable_metadata_with_a_message_not_a_traceback(tmp_path, caplog):
    metadata = tmp_path / "metadata.json"
    for text, message in (('["a.mp4", "b.mp4"]', "expected a JSON object"), ("null", "got NoneType"),
                          ("{broken", "not valid JSON")):
        metadata.write_text(text)
        caplog.clear()
        assert folds_main(["--metadata", str(metadata), "--k", "2", "--out", str(tmp_path / "f.csv")]) == 2
        assert message in caplog.text and str(metadata) in caplog.text
    assert folds_main(["--data", str(tmp_path / "nowhere"), "--k", "2", "--out", str(tmp_path / "f.csv")]) == 2
    assert "no such folder" in caplog.text
    assert not (tmp_path / "f.csv").exists()
