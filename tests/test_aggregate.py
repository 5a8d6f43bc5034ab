import json

import numpy as np
import pytest

from kernel.aggregate import (FEATURE_STATS, Stacker, confident_strategy, person_scores, video_features,
                              video_score)


def test_confident_strategy_trusts_a_confident_majority():
    fakes = np.array([0.95] * 20 + [0.3] * 12)
    assert confident_strategy(fakes) == pytest.approx(0.95)
    reals = np.array([0.05] * 31 + [0.7])
    assert confident_strategy(reals) == pytest.approx(0.05)
    mixed = np.array([0.9] * 5 + [0.4] * 27)
    assert confident_strategy(mixed) == pytest.approx(mixed.mean())


def test_video_is_as_fake_as_its_most_fake_person():
    persons = {0: np.full(32, 0.1), 1: np.full(20, 0.9)}
    assert video_score(persons, "mean") == pytest.approx(0.9)
    assert person_scores(persons, "mean") == {0: pytest.approx(0.1), 1: pytest.approx(0.9)}
    with pytest.raises(ValueError, match="unknown aggregation"):
        person_scores(persons, "median-of-means")
    with pytest.raises(ValueError):
        video_score({}, "mean")


def test_video_features_describe_the_deciding_person():
    persons = {0: np.array([0.1, 0.1, 0.1]), 1: np.array([0.9, 0.85, 0.1, 0.7])}
    features = video_features(persons)
    assert set(features) == set(FEATURE_STATS)
    assert features["max"] == pytest.approx(0.9)
    assert features["mean"] == pytest.approx(np.mean([0.9, 0.85, 0.1, 0.7]))
    assert features["share_above_0.8"] == pytest.approx(0.5)
    assert features["persons"] == 2 and features["frames_with_faces"] == 4


def test_stacker_json_applies_logistic_regression(tmp_path):
    path = tmp_path / "stacker.json"
    path.write_text(json.dumps({"feature_names": ["a.mean", "b.mean"], "coef": [2.0, -1.0], "intercept": 0.5}))
    stacker = Stacker.from_json(path)
    expected = 1 / (1 + np.exp(-(2.0 * 0.3 - 1.0 * 0.6 + 0.5)))
    assert stacker.predict_one({"a.mean": 0.3, "b.mean": 0.6, "c.mean": 9}) == pytest.approx(expected)
    with pytest.raises(KeyError, match="b.mean"):
        stacker.predict_one({"a.mean": 0.3})
    path.write_text(json.dumps({"coef": [1.0]}))
    with pytest.raises(ValueError, match="feature_names"):
        Stacker.from_json(path)
