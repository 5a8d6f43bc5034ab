"""`kernel.validate` (issue 12): labels outside [0, 1] and duplicated rows are errors; labelled videos missing
from the submission are named, and scored as a subset only with `--allow-partial`."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernel.evaluation import validate
from kernel.validate import main as validate_main


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
