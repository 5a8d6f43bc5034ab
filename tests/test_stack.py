"""ensemble.stack: the calibrator/stacker fitted to the target prior, honest nested grouped CV, plain JSON."""
import csv
import json
import re
from itertools import combinations

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold

import ensemble.stacking as stack
from dfdc_core.aggregate import Stacker, logit
from dfdc_core.metrics import prior_weights
from ensemble.stack import main as stack_main


def write_oof(tmp_path, n_videos=120, seed=0, fake_share=0.7, models=("good", "noise"), cluster_size=3):
    """OOF rows: 'good' tracks the label, 'noise' is random, 'bad' is reversed; videos come in clusters."""
    rng = np.random.default_rng(seed)
    oof, folds = tmp_path / "oof.csv", tmp_path / "folds.csv"
    with open(oof, "w", newline="") as o, open(folds, "w", newline="") as f:
        rows = csv.writer(o)
        rows.writerow(["video", "frame", "person", "model", "group", "prob", "label"])
        groups = csv.writer(f)
        groups.writerow(["video", "label", "original", "group", "fold"])
        for v in range(n_videos):
            label = int(rng.random() < fake_share)
            groups.writerow([f"v{v}.mp4", label, "", v // cluster_size, 0])
            level = 0.65 if label else 0.35
            for frame in range(8):
                probs = {"good": np.clip(rng.normal(level, 0.15), 0, 1), "noise": rng.random(),
                         "bad": np.clip(rng.normal(1 - level, 0.15), 0, 1)}
                for model in models:
                    rows.writerow([f"v{v}.mp4", frame, 0, f"{model}_fold0", model, probs[model], label])
    return oof, folds


def rows_by_name(report):
    return {row["name"]: row for row in report}


@pytest.mark.slow
def test_stacker_beats_the_plain_mean_when_one_model_is_noise(tmp_path):
    oof, folds = write_oof(tmp_path)
    stacker, report, _ = stack.fit_stacker([oof], folds)
    rows = rows_by_name(report)
    assert rows["stacker (nested CV)"]["log_loss"] < rows["mean of models"]["log_loss"]
    assert rows["stacker (nested CV)"]["log_loss"] < rows["constant prior"]["log_loss"] == pytest.approx(np.log(2))
    assert stacker["groups"] == ["good", "noise"] and stacker["videos"] == 120 and stacker["kind"] == "stacker"
    coef = dict(zip(stacker["feature_names"], stacker["coef"]))
    assert coef["good.logit"] > 3 * abs(coef["noise.logit"])


@pytest.mark.slow
def test_calibrator_is_fitted_to_the_target_prior_not_the_oof_share(tmp_path):
    """70 % of the OOF videos are fake; the calibrator's weighted mean output sits at the target prior."""
    oof, folds = write_oof(tmp_path, n_videos=300, models=("noise",))
    for target in (0.5, 0.3):
        stacker, _, table = stack.fit_stacker([oof], folds, target_prior=target)
        probs = Stacker.from_json(write_json(tmp_path, stacker)).predict(table.features)
        assert np.all(np.abs(probs - target) < 0.08)  # an uninformative model: the prior, not 0.7
    oof, folds = write_oof(tmp_path, n_videos=300, models=("good",))
    stacker, _, table = stack.fit_stacker([oof], folds, target_prior=0.5)
    probs = Stacker.from_json(write_json(tmp_path, stacker)).predict(table.features)
    assert np.average(probs, weights=prior_weights(table.labels, 0.5)) == pytest.approx(0.5, abs=0.03)
    assert stacker["oof_prior"] == pytest.approx(table.labels.mean())


def write_json(tmp_path, stacker) -> str:
    path = tmp_path / "stacker.json"
    path.write_text(json.dumps(stacker))
    return path


def test_one_model_gets_a_monotone_calibrator(tmp_path):
    oof, folds = write_oof(tmp_path, models=("good",))
    stacker, _, _ = stack.fit_stacker([oof], folds)
    assert stacker["kind"] == "platt" and stacker["feature_names"] == ["good.logit"] and stacker["coef"][0] > 0
    calibrator = Stacker.from_json(write_json(tmp_path, stacker))
    outputs = calibrator.predict(logit(np.linspace(0.001, 0.999, 200))[:, None])
    assert np.all(np.diff(outputs) >= 0) and outputs[-1] - outputs[0] > 0.9
    oof, folds = write_oof(tmp_path, models=("bad",))
    stacker, _, _ = stack.fit_stacker([oof], folds)
    assert stacker["coef"] == [0.0]  # never a reversed model: the constant prior instead
    flat = Stacker.from_json(write_json(tmp_path, stacker)).predict(np.array([[-3.0], [3.0]]))
    assert flat == pytest.approx([0.5, 0.5])


def test_json_applied_with_numpy_equals_sklearn(tmp_path):
    oof, folds = write_oof(tmp_path)
    scores, labels = stack.read_oof([oof])
    table = stack.build_table(scores, labels, stack.read_groups(folds), ["good", "noise"], "mean",
                              ("logit", "std", "share_above_0.8"))
    model = stack.fit_regression(table.features, table.labels, 0.3, 0.5)
    applied = Stacker.from_json(write_json(tmp_path, stack.export(model, table.feature_names, (0.01, 0.99))))
    assert np.max(np.abs(applied.predict(table.features) - model.predict_proba(table.features)[:, 1])) < 1e-9


@pytest.mark.slow
def test_cross_validation_never_trains_on_the_cluster_it_predicts(tmp_path, monkeypatch):
    """Every split of the nested CV and of the choice of C keeps each original cluster (from the folds CSV, not from
    what the splitter was handed) on one side, for the stacker and for its variants (a subset of the columns)."""
    oof, folds = write_oof(tmp_path, n_videos=60, cluster_size=4)
    with open(folds, newline="") as handle:  # the clusters as written, not as ensemble.stack reads them
        cluster_of = {row["video"]: row["group"] for row in csv.DictReader(handle)}
    splits = []
    real_split = GroupKFold.split

    def recording_split(self, x, y=None, groups=None):
        for train, test in real_split(self, x, y, groups):
            splits.append((x, train, test))
            yield train, test

    monkeypatch.setattr(GroupKFold, "split", recording_split)
    _, _, table = stack.fit_stacker([oof], folds)
    columns = range(table.features.shape[1])
    row_cluster = {tuple(row[list(kept)]): cluster_of[video] for row, video in zip(table.features, table.videos)
                   for size in columns for kept in combinations(columns, size + 1)}
    assert len(splits) > 20 and {x.shape[1] for x, _, _ in splits} == {1, 2}
    for x, train, test in splits:
        assert not {row_cluster[tuple(x[i])] for i in train} & {row_cluster[tuple(x[i])] for i in test}


@pytest.mark.slow
def test_cli_writes_json_and_prints_the_comparison(tmp_path, capsys):
    oof, folds = write_oof(tmp_path)
    out = tmp_path / "stacker.json"
    assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(out), "--features", "logit", "std"]) == 0
    printed = capsys.readouterr().out
    for expected in ("model good", "mean of models", "stacker (nested CV)", "constant prior", "pays off",
                     "calibrated to 50% fakes"):
        assert expected in printed
    data = json.loads(out.read_text())
    assert {"feature_names", "coef", "intercept", "clip", "sklearn_version", "aggregation", "target_prior",
            "report"} <= set(data)
    assert data["feature_names"] == ["good.logit", "good.std", "noise.logit", "noise.std"]


def test_bad_inputs_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("video,prob\nx,1\n")
    oof, folds = write_oof(tmp_path)
    assert stack_main(["--oof", str(bad), "--folds", str(folds), "--out", str(tmp_path / "s.json")]) == 2
    assert "bad.csv: lacks columns" in capsys.readouterr().err
    assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(tmp_path / "s.json"),
                       "--target-prior", "1"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err
    with pytest.raises(stack.OOFError, match="not in the folds CSV"):
        folds.write_text("video,label,original,group,fold\nother.mp4,1,,0,0\n")
        stack.fit_stacker([oof], folds)


@pytest.mark.slow
def test_variants_for_every_subset_of_the_groups_and_the_kernel_picks_the_one_left(tmp_path, capsys):
    """Issue 11: with several groups the JSON carries a refit per proper subset, which `Stacker.for_groups` picks
    when the kernel's time budget leaves only those groups."""
    oof, folds = write_oof(tmp_path, n_videos=60, models=("good", "noise", "bad"))
    out = tmp_path / "stacker.json"
    assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(out), "--splits", "3"]) == 0
    assert "variant without ['noise']: log loss" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [variant["groups"] for variant in data["variants"]] == [
        ["bad", "good"], ["bad", "noise"], ["good", "noise"], ["bad"], ["good"], ["noise"]]
    losses = {tuple(variant["groups"]): variant["log_loss"] for variant in data["variants"]}
    assert losses[("good",)] < losses[("noise",)] and losses[("bad", "good")] < losses[("bad", "noise")]
    stacker = Stacker.from_json(out)
    assert stacker.for_groups(["bad", "good", "noise"]) is stacker
    assert stacker.for_groups(["good", "noise"]).feature_names == ["good.logit", "noise.logit"]
    assert stacker.for_groups(["good"]).groups == ["good"] and stacker.for_groups(["other"]) is None
    scores, labels = stack.read_oof([oof])
    table = stack.build_table(scores, labels, stack.read_groups(folds), ["good"], "mean")
    refit = stack.export(stack.fit_regression(table.features, table.labels, data["variants"][4]["C"], 0.5),
                         table.feature_names, (0.01, 0.99))
    assert stacker.for_groups(["good"]).coef == pytest.approx(refit["coef"])  # the variant is that group's own fit
    assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(out), "--splits", "3",
                       "--no-variants"]) == 0
    assert "variants" not in json.loads(out.read_text()) and Stacker.from_json(out).variants == ()


def test_c_is_the_one_with_the_lowest_grouped_cv_log_loss(monkeypatch):
    """Every C of the grid is tried on the original clusters (as many splits as there are, at most `splits`); the
    one whose out-of-cluster predictions have the lowest log loss wins."""
    y = np.array([0, 1] * 6)
    clusters = np.repeat(np.arange(4), 3)
    best = stack.C_GRID[len(stack.C_GRID) // 2]
    tried = []

    def predictions(x, labels, groups, c, splits, target_prior):
        tried.append((c, splits, groups.tolist()))
        return np.where(labels == 1, 0.8, 0.2) if c == best else np.where(labels == 1, 0.6, 0.4)

    monkeypatch.setattr(stack, "grouped_predictions", predictions)
    assert stack.choose_c(np.zeros((12, 1)), y, clusters, 5, 0.5, (0.01, 0.99)) == best
    assert [c for c, _, _ in tried] == list(stack.C_GRID)
    assert {(splits, tuple(groups)) for _, splits, groups in tried} == {(4, tuple(clusters))}
    assert stack.choose_c(np.zeros((12, 1)), y, np.zeros(12), 5, 0.5, (0.01, 0.99)) == 1.0  # one cluster: no CV


# ------------------------------------------------------------------------------------------ issue 33: bad input

def replace_line(path, number: int, row: list) -> None:
    """Line `number` (1-based, the header is line 1) of a CSV replaced by `row`."""
    lines = path.read_text().splitlines()
    lines[number - 1] = ",".join(str(value) for value in row)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("column,value,wanted", [
    ("prob", "nan", "a number from 0 to 1"), ("prob", "inf", "a number from 0 to 1"),
    ("prob", "high", "a number from 0 to 1"), ("prob", "", "a number from 0 to 1"),
    ("prob", "-2", "a number from 0 to 1"), ("prob", "3", "a number from 0 to 1"),
    ("label", "2", "0 (real) or 1 (fake)"), ("label", "0.5", "0 (real) or 1 (fake)"),
    ("label", "FAKE", "0 (real) or 1 (fake)"), ("label", "", "0 (real) or 1 (fake)"),
    ("frame", "", "a whole number"), ("frame", "1.5", "a whole number"), ("person", "p0", "a whole number"),
    ("video", "", "a video name"),
])
def test_a_bad_oof_value_is_named_with_its_file_and_line(tmp_path, capsys, column, value, wanted):
    oof, folds = write_oof(tmp_path, n_videos=30)
    header = oof.read_text().splitlines()[0].split(",")
    row = oof.read_text().splitlines()[4].split(",")
    row[header.index(column)] = value
    replace_line(oof, 5, row)
    out = tmp_path / "s.json"
    assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {oof}: line 5: '{column}' is {value!r}; it must be {wanted}; pass the oof.csv written by "
                   "train_fold.py\n")
    assert not out.exists()


def test_a_blank_model_without_a_group_and_a_short_row_are_named(tmp_path):
    oof = tmp_path / "oof.csv"
    oof.write_text("video,frame,person,model,prob,label\nv.mp4,0,0,,0.5,1\n")
    with pytest.raises(stack.OOFError, match=r"line 2: 'model' is ''; it must be a model name"):
        stack.read_oof([oof])
    oof.write_text("video,frame,person,model,prob,label\nv.mp4,0,0,m\n")
    with pytest.raises(stack.OOFError, match=r"line 2: 'prob' is None; it must be a number from 0 to 1"):
        stack.read_oof([oof])


def test_unreadable_oof_and_folds_files_are_named(tmp_path, capsys):
    oof, folds = write_oof(tmp_path, n_videos=30)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(oof.read_bytes().replace(b"v1.mp4", b"v\xe9.mp4"))
    cases = [([str(tmp_path)], folds, f"{tmp_path}: cannot read it (Is a directory); pass the oof.csv written by "
                                      "train_fold.py"),
             ([str(tmp_path / "absent.csv")], folds, f"{tmp_path / 'absent.csv'}: cannot read it (No such file or "
                                                     "directory); pass the oof.csv written by train_fold.py"),
             ([str(latin)], folds, f"{latin}: cannot read it as UTF-8 CSV ('utf-8' codec can't decode byte 0xe9"),
             ([str(oof)], tmp_path, f"{tmp_path}: cannot read it (Is a directory); pass the folds.csv of "
                                    "training/folds.py")]
    for oofs, folds_path, message in cases:
        assert stack_main(["--oof", *oofs, "--folds", str(folds_path), "--out", str(tmp_path / "s.json")]) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")
    replace_line(folds, 3, ["v1.mp4", 1, "", "x", 0])
    with pytest.raises(stack.OOFError, match=re.escape(f"{folds}: line 3: video 'v1.mp4', group 'x'; each row needs a "
                                                       "video name and a whole-number group")):
        stack.read_groups(folds)


def test_out_is_checked_before_fitting_and_never_an_input(tmp_path, capsys, monkeypatch):
    oof, folds = write_oof(tmp_path, n_videos=30)
    monkeypatch.setattr(stack, "nested_predictions", lambda *a, **k: pytest.fail("fitted"))
    before = oof.read_bytes(), folds.read_bytes()
    (tmp_path / "a_file").write_text("")
    for out, message in [(oof, f"--out {oof}: writing {oof} would overwrite the input {oof}; pass --out a new file "
                                "name"),
                         (folds, f"--out {folds}: writing {folds} would overwrite the input {folds}"),
                         (tmp_path, f"--out {tmp_path}: {tmp_path} is a folder; name a file, e.g. --out "
                                    f"{tmp_path / 'stacker.json'}"),
                         (tmp_path / "a_file" / "s.json", f"--out {tmp_path / 'a_file' / 's.json'}: cannot write in "
                                                          f"{tmp_path / 'a_file'} (")]:
        assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(out)]) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")
    assert (oof.read_bytes(), folds.read_bytes()) == before
    for splits in ("1", "0", "-3"):
        assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(tmp_path / "s.json"),
                           "--splits", splits]) == 2
        assert capsys.readouterr().err == f"error: --splits {splits}: grouped cross-validation needs at least 2\n"


def test_oof_and_folds_that_are_pipes_or_devices_are_refused_without_blocking(tmp_path, capsys):
    from tests.helpers import pipe_that_unblocks

    oof, folds = write_oof(tmp_path, n_videos=30)
    pipe = pipe_that_unblocks(tmp_path / "pipe.csv")
    for oofs, folds_path, named in [(pipe, folds, pipe), ("/dev/zero", folds, "/dev/zero"), (oof, pipe, pipe)]:
        assert stack_main(["--oof", str(oofs), "--folds", str(folds_path), "--out", str(tmp_path / "s.json")]) == 2
        assert capsys.readouterr().err.startswith(f"error: {named}: cannot read it (not a regular file (a device or "
                                                  "a pipe))")


def write_rows(path, rows: list[dict], leave_out: str | None = None) -> None:
    """`rows` written as a CSV with the first row's columns, less `leave_out`."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[name for name in rows[0] if name != leave_out],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_cli_fits_on_the_sources_holding_both_classes_as_the_recipe_does(tmp_path, capsys):
    """A real-only source (face photos) cannot place the prior-weighted boundary: left out of the fit by default,
    kept with --fit-on every; a folds CSV without sources fits every item, as before."""
    oof, folds = write_oof(tmp_path, n_videos=90, models=("good",))
    with open(folds, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for number, row in enumerate(rows):
        row["source"] = "photos" if number >= 60 and row["label"] == "0" else "clips"
    clips = {row["video"] for row in rows if row["source"] == "clips"}
    assert 60 < len(clips) < 90
    write_rows(folds, rows)
    assert stack.calibration_items(folds) == clips
    plain = tmp_path / "plain_folds.csv"
    write_rows(plain, rows, leave_out="source")
    assert stack.calibration_items(plain) is None
    out = tmp_path / "stacker.json"
    assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["videos"] == len(clips)
    assert f"fitted on the {len(clips)} items of the sources holding reals and fakes" in capsys.readouterr().out
    assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(out), "--fit-on", "every"]) == 0
    assert json.loads(out.read_text())["videos"] == 90 and "left out" not in capsys.readouterr().out
    rows[5]["label"] = "maybe"
    write_rows(folds, rows)
    assert stack_main(["--oof", str(oof), "--folds", str(folds), "--out", str(out)]) == 2
    assert f"{folds}: line 7: label 'maybe'" in capsys.readouterr().err
