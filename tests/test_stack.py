import csv
import json

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold

import ensemble.stack as stack
from kernel.aggregate import Stacker


def write_oof(tmp_path, n_videos=120, seed=0):
    """Two models' OOF rows: 'good' tracks the label, 'noise' is random; videos come in groups of three."""
    rng = np.random.default_rng(seed)
    oof, folds = tmp_path / "oof.csv", tmp_path / "folds.csv"
    with open(oof, "w", newline="") as o, open(folds, "w", newline="") as f:
        rows = csv.writer(o)
        rows.writerow(["video", "frame", "person", "model", "prob", "label"])
        groups = csv.writer(f)
        groups.writerow(["video", "label", "original", "group", "fold"])
        for v in range(n_videos):
            label = int(rng.random() < 0.7)
            groups.writerow([f"v{v}.mp4", label, "", v // 3, 0])
            level = 0.65 if label else 0.35
            for frame in range(8):
                rows.writerow([f"v{v}.mp4", frame, 0, "good", np.clip(rng.normal(level, 0.15), 0, 1), label])
                rows.writerow([f"v{v}.mp4", frame, 0, "noise", rng.random(), label])
    return oof, folds


def test_stacker_beats_the_plain_mean_when_one_model_is_noise(tmp_path):
    oof, folds = write_oof(tmp_path)
    stacker, report = stack.fit_stacker([oof], folds)
    assert report["stacker (grouped CV)"] < report["mean of models"]
    assert stacker["models"] == ["good", "noise"] and stacker["videos"] == 120
    good = [abs(c) for n, c in zip(stacker["feature_names"], stacker["coef"]) if n == "good.mean"][0]
    noise = [abs(c) for n, c in zip(stacker["feature_names"], stacker["coef"]) if n == "noise.mean"][0]
    assert good > noise


def test_json_applied_with_numpy_equals_sklearn(tmp_path):
    oof, folds = write_oof(tmp_path)
    scores, labels = stack.read_oof([oof])
    _, x, y, _, _, names = stack.build_table(scores, labels, stack.read_groups(folds), ["good", "noise"], "confident")
    model = stack.make_pipeline(stack.StandardScaler(), stack.LogisticRegression(C=0.3, max_iter=1000)).fit(x, y)
    path = tmp_path / "stacker.json"
    path.write_text(json.dumps(stack.export(model, names, (0.01, 0.99))))
    applied = Stacker.from_json(path).predict(x)
    assert np.max(np.abs(applied - model.predict_proba(x)[:, 1])) < 1e-9


def test_grouped_cv_never_splits_an_original_cluster(tmp_path, monkeypatch):
    oof, folds = write_oof(tmp_path, n_videos=60)
    seen = []
    real_split = GroupKFold.split

    def recording_split(self, x, y=None, groups=None):
        for train, test in real_split(self, x, y, groups):
            seen.append((set(groups[train]), set(groups[test])))
            yield train, test

    monkeypatch.setattr(GroupKFold, "split", recording_split)
    stack.fit_stacker([oof], folds)
    assert seen and all(not (train & test) for train, test in seen)


def test_cli_writes_json_and_prints_the_comparison(tmp_path, capsys):
    oof, folds = write_oof(tmp_path)
    out = tmp_path / "stacker.json"
    assert stack.main(["--oof", str(oof), "--folds", str(folds), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "log loss model good" in printed and "mean of models" in printed and "pays off" in printed
    data = json.loads(out.read_text())
    assert {"feature_names", "coef", "intercept", "clip", "sklearn_version", "aggregation"} <= set(data)


def test_bad_inputs_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("video,prob\nx,1\n")
    oof, folds = write_oof(tmp_path)
    assert stack.main(["--oof", str(bad), "--folds", str(folds), "--out", str(tmp_path / "s.json")]) == 2
    assert "bad.csv: lacks columns" in capsys.readouterr().err
    with pytest.raises(stack.OOFError, match="not in the folds CSV"):
        folds.write_text("video,label,original,group,fold\nother.mp4,1,,0,0\n")
        stack.fit_stacker([oof], folds)
