import json

import numpy as np
import pytest

from dfdc_core.aggregate import (
    FEATURE_STATS,
    STRATEGIES,
    Stacker,
    confident_strategy,
    logit,
    person_scores,
    trimmed_mean_strategy,
    video_features,
    video_score,
)


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
    features = video_features(persons, "mean")
    assert set(features) == set(FEATURE_STATS)
    assert features["logit"] == pytest.approx(float(logit(np.mean([0.9, 0.85, 0.1, 0.7]))))
    assert features["mean"] == pytest.approx(np.mean([0.9, 0.85, 0.1, 0.7]))
    assert features["share_above_0.8"] == pytest.approx(0.5)
    assert video_features({0: np.array([1.0])})["logit"] == pytest.approx(7.0)  # capped


def test_features_do_not_depend_on_the_frame_count():
    """A video sampled at 16 and at 32 frames gives the same features within noise (no counts among them)."""
    rng = np.random.default_rng(0)
    for level in (0.2, 0.5, 0.8):
        scores = np.clip(rng.normal(level, 0.15, 320), 0.001, 0.999)  # one video's face scores over time
        at_32, at_16 = video_features({0: scores[::10]}), video_features({0: scores[::20]})
        for stat in FEATURE_STATS:
            assert abs(at_32[stat] - at_16[stat]) < (0.5 if stat == "logit" else 0.12), stat


def test_aggregations():
    probs = np.array([0.9] * 6 + [0.1] * 2 + [0.99, 0.01])
    assert set(STRATEGIES) == {"mean", "trimmed_mean", "logit_mean", "confident"}
    assert trimmed_mean_strategy(probs) == pytest.approx(np.mean(np.sort(probs)[2:8]))
    assert person_scores({0: probs}, "logit_mean")[0] == pytest.approx(
        float(1 / (1 + np.exp(-np.mean(logit(probs))))))


def test_stacker_json_applies_logistic_regression(tmp_path):
    path = tmp_path / "stacker.json"
    path.write_text(json.dumps({"feature_names": ["a.mean", "b.mean"], "coef": [2.0, -1.0], "intercept": 0.5}))
    stacker = Stacker.from_json(path)
    assert stacker.groups == ["a", "b"]
    expected = 1 / (1 + np.exp(-(2.0 * 0.3 - 1.0 * 0.6 + 0.5)))
    assert stacker.predict_one({"a.mean": 0.3, "b.mean": 0.6, "c.mean": 9}) == pytest.approx(expected)
    with pytest.raises(KeyError, match="b.mean"):
        stacker.predict_one({"a.mean": 0.3})
    path.write_text(json.dumps({"coef": [1.0]}))
    with pytest.raises(ValueError, match="feature_names"):
        Stacker.from_json(path)
