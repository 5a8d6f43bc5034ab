"""`python -m kernel.validate` (`kernel/validate.py`, `kernel/validation.py`): a submission scored against a DFDC
metadata.json; labels outside [0, 1] and duplicated rows are errors; labelled videos missing from the submission are
named, and scored as a subset only with `--allow-partial`."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfdc_core.metrics import log_loss
from kernel.validate import main as validate_main
from kernel.validation import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def labelled(tmp_path):
    metadata = {"a.mp4": {"label": "FAKE"}, "b.mp4": {"label": "REAL"}, "c.mp4": {"label": "FAKE"},
                "d.mp4": {"label": "REAL"}, "e.mp4": {"label": None}}
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    submission = pd.DataFrame({"filename": ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4"],
                               "label": [1.0, 0.3, 0.25, 0.0, 0.5]})
    submission.to_csv(tmp_path / "submission.csv", index=False)
    return tmp_path


def test_log_loss_clips_like_the_kernel():
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-np.log(0.99))
    assert log_loss([1], [0.0]) == pytest.approx(-np.log(0.01))


def test_validate_reports_metrics_and_plots(labelled):
    report = validate(labelled / "submission.csv", labelled / "metadata.json", labelled / "plots")
    expected = -np.mean(np.log([0.99, 0.7, 0.25, 0.99]))
    assert report["log_loss"] == pytest.approx(expected)
    assert report["auc"] == pytest.approx(0.75) and report["accuracy"] == pytest.approx(0.75)
    assert report["n"] == 4 and report["unlabelled"] == 1
    for name in ("confusion_matrix.png", "roc.png"):
        assert (labelled / "plots" / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_validate_cli_prints_the_figures_and_fails_clearly(labelled):
    ok = subprocess.run([sys.executable, "-m", "kernel.validate", "--submission", str(labelled / "submission.csv"),
                         "--metadata", str(labelled / "metadata.json")], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "AUC: 0.7500" in ok.stdout
    (labelled / "bad.csv").write_text("name,prob\nx,1\n")
    bad = subprocess.run([sys.executable, "-m", "kernel.validate", "--submission", str(labelled / "bad.csv"),
                          "--metadata", str(labelled / "metadata.json")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "filename,label" in bad.stderr


@pytest.fixture()
def sixty_four(tmp_path):
    """DFDC metadata with 64 labelled videos (and one unlabelled)."""
    metadata = {f"v{number:02d}.mp4": {"label": "FAKE" if number % 2 else "REAL"} for number in range(64)}
    metadata["u.mp4"] = {"label": None}
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    return tmp_path


def validate_cli(folder: Path, rows: pd.DataFrame, capsys, *flags: str) -> tuple[int, str, str]:
    """`python -m kernel.validate` (in this process) on `rows`: exit status, stdout, stderr."""
    rows.to_csv(folder / "submission.csv", index=False)
    code = validate_main(["--submission", str(folder / "submission.csv"), "--metadata", str(folder / "metadata.json"),
                          *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validate_refuses_labels_out_of_range_and_duplicated_rows(sixty_four, capsys):
    names = [f"v{number:02d}.mp4" for number in range(64)]
    labels = np.full(64, 0.5)
    labels[[3, 7]] = [-3, 7.5]
    code, _, err = validate_cli(sixty_four, pd.DataFrame({"filename": names, "label": labels}), capsys)
    assert code == 2 and "2 labels are not numbers from 0 to 1" in err and "v03.mp4" in err and "v07.mp4" in err
    twice = pd.DataFrame({"filename": names + ["v05.mp4"], "label": 0.5})
    code, _, err = validate_cli(sixty_four, twice, capsys)
    assert code == 2 and "more than one row (['v05.mp4'])" in err


def test_validate_names_missing_labelled_videos_and_scores_a_subset_only_when_asked(sixty_four, capsys):
    present = pd.DataFrame({"filename": [f"v{number:02d}.mp4" for number in range(10)] + ["u.mp4"],
                            "label": [0.2, 0.8] * 5 + [0.5]})
    code, _, err = validate_cli(sixty_four, present, capsys)
    assert code == 2 and "lacks 54 labelled videos" in err and "v10.mp4" in err and "--allow-partial" in err
    code, out, err = validate_cli(sixty_four, present, capsys, "--allow-partial")
    assert code == 0, err
    assert "missing labelled videos: 54 (not scored: v10.mp4, v11.mp4" in out
    assert "videos scored: 10 (unlabelled skipped: 1)" in out and "AUC: 1.0000" in out


def test_validate_function_reports_missing_videos_and_refuses_them_when_asked(sixty_four):
    """The Python function scores a subset (a held-out fold, as the demo does) unless `allow_partial=False`."""
    pd.DataFrame({"filename": ["v00.mp4", "v01.mp4"], "label": [0.1, 0.9]}).to_csv(sixty_four / "s.csv", index=False)
    report = validate(sixty_four / "s.csv", sixty_four / "metadata.json")
    assert report["n"] == 2 and len(report["missing"]) == 62 and report["missing"][0] == "v02.mp4"
    with pytest.raises(ValueError, match="lacks 62 labelled videos"):
        validate(sixty_four / "s.csv", sixty_four / "metadata.json", allow_partial=False)


# ------------------------------------------------------------------------------------------ issue 33

def validate_files(capsys, submission: str | Path, metadata: str | Path, *flags: str) -> tuple[int, str]:
    """`python -m kernel.validate` on the files given: exit status and stderr."""
    code = validate_main(["--submission", str(submission), "--metadata", str(metadata), *flags])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    (None, "cannot read it (Is a directory); pass --submission the CSV python -m kernel wrote"),
    (b"", "cannot read it as CSV (No columns to parse from file); a submission is 'filename,label' rows"),
    (b"filename,label\n", "has no rows; a submission has one 'filename,label' row per video"),
    (b"filename,label\nv00.mp4,0.5\nv01.mp4,\n", "1 labels are not numbers from 0 to 1 (videos ['v01.mp4'])"),
    (b"filename,label\nv00.mp4,True\nv01.mp4,False\n", "2 labels are not numbers from 0 to 1 (videos ['v00.mp4', "
                                                       "'v01.mp4'])"),
    (b"filename,label\nv00.mp4,nan\nv01.mp4,inf\nv02.mp4,-inf\n", "3 labels are not numbers from 0 to 1"),
    (b"filename,label\nv00.mp4,0.5\nv\xe9.mp4,0.5\n", "cannot read it as CSV ('utf-8' codec can't decode"),
    (b"name,p\nv00.mp4,0.5\n", "needs 'filename,label' columns, has ['name', 'p']"),
])
def test_a_submission_that_is_no_submission_is_named(sixty_four, capsys, content, message):
    path = sixty_four / "sub.csv"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    code, err = validate_files(capsys, path, sixty_four / "metadata.json", "--allow-partial")
    assert code == 2 and err.startswith(f"error: {path}: {message}") and "Traceback" not in err


@pytest.mark.parametrize("content,message", [
    (None, "cannot read it (Is a directory); pass --metadata the DFDC metadata.json"),
    ("[]", "expected the DFDC metadata, an object of videos, each an object with its \"label\" (\"REAL\" or \"FAKE\"); "
           "got []"),
    ("null", "expected the DFDC metadata, an object of videos, each an object with its \"label\" (\"REAL\" or "
             "\"FAKE\"); got None"),
    ('{"v00.mp4": "FAKE"}', "expected the DFDC metadata, an object of videos, each an object with its \"label\" "
                            "(\"REAL\" or \"FAKE\"); got {'v00.mp4': 'FAKE'}"),
    ("{", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); pass "
          "--metadata the DFDC metadata.json"),
])
def test_metadata_that_is_no_dfdc_metadata_is_named(sixty_four, capsys, content, message):
    rows = sixty_four / "s.csv"
    pd.DataFrame({"filename": ["v00.mp4"], "label": [0.5]}).to_csv(rows, index=False)
    path = sixty_four / "other.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    code, err = validate_files(capsys, rows, path, "--allow-partial")
    assert code == 2 and err == f"error: {path}: {message}\n"
    code, err = validate_files(capsys, rows, sixty_four / "absent.json")
    assert code == 2 and err == (f"error: {sixty_four / 'absent.json'}: cannot read it (No such file or directory); "
                                 "pass --metadata the DFDC metadata.json\n")


def test_video_names_that_pandas_reads_as_missing_are_names(tmp_path, capsys):
    names = ["NA", "null", "nan", "None", "n/a", "NaN", "-nan", "#N/A"]
    metadata = {name: {"label": "FAKE" if number % 2 else "REAL"} for number, name in enumerate(names)}
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    (tmp_path / "s.csv").write_text("filename,label\n" + "".join(f"{name},{0.9 if number % 2 else 0.1}\n"
                                                                 for number, name in enumerate(names)))
    code = validate_main(["--submission", str(tmp_path / "s.csv"), "--metadata", str(tmp_path / "metadata.json")])
    out = capsys.readouterr().out
    assert code == 0 and "videos scored: 8 (unlabelled skipped: 0)" in out and "accuracy: 1.0000" in out
    assert validate(tmp_path / "s.csv", tmp_path / "metadata.json")["missing"] == []


def test_plots_where_no_folder_can_be_made_is_refused_before_any_file(sixty_four, capsys):
    rows = pd.DataFrame({"filename": [f"v{number:02d}.mp4" for number in range(64)], "label": 0.5})
    (sixty_four / "a_file").write_text("keep me")
    for plots in (sixty_four / "a_file", sixty_four / "a_file" / "plots"):
        code, _, err = validate_cli(sixty_four, rows, capsys, "--plots", str(plots))
        assert code == 2 and err.startswith(f"error: --plots {plots}: cannot write in {plots} (")
        assert err.endswith("); pick a writable folder\n")
    assert (sixty_four / "a_file").read_text() == "keep me"
    assert sorted(path.name for path in sixty_four.iterdir()) == ["a_file", "metadata.json", "submission.csv"]
    code, out, _ = validate_cli(sixty_four, rows, capsys, "--plots", str(sixty_four / "plots"))
    assert code == 0 and sorted(p.name for p in (sixty_four / "plots").iterdir()) == ["confusion_matrix.png", "roc.png"]


def test_inputs_that_are_pipes_or_devices_are_refused_without_blocking(sixty_four, capsys):
    from tests.helpers import pipe_that_unblocks

    pipe = pipe_that_unblocks(sixty_four / "pipe")
    for submission, metadata, named in [(pipe, sixty_four / "metadata.json", pipe),
                                        (Path("/dev/zero"), sixty_four / "metadata.json", Path("/dev/zero"))]:
        code, err = validate_files(capsys, submission, metadata)
        assert code == 2 and err.startswith(f"error: {named}: cannot read it (not a regular file (a device or a pipe))")
    pd.DataFrame({"filename": ["v00.mp4"], "label": [0.5]}).to_csv(sixty_four / "s.csv", index=False)
    code, err = validate_files(capsys, sixty_four / "s.csv", "/dev/zero", "--allow-partial")
    assert code == 2 and err.startswith("error: /dev/zero: cannot read it (not a regular file (a device or a pipe))")
