import json

import numpy as np
import pytest

from dfdc_core.aggregate import (
    FEATURE_STATS,
    STRATEGIES,
    Stacker,
    confident_strategy,
    feature_name,
    logit,
    logit_mean_strategy,
    mean_strategy,
    person_scores,
    sigmoid,
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


# ------------------------------------------------------------------ exact values: `make mutation` runs these

def test_logit_is_capped_and_sigmoid_inverts_it():
    assert logit(0.5) == 0.0 and logit(0.9) == pytest.approx(np.log(9.0))
    assert logit([0.0, 1.0]).tolist() == [-7.0, 7.0] and logit(0.9999, bound=2.0) == 2.0
    assert logit(1e-13, bound=40.0) == pytest.approx(np.log(1e-12), rel=1e-6)  # clipped at 1e-12 before the log
    assert logit(1.0, bound=40.0) == pytest.approx(-np.log(1e-12), rel=1e-6)  # and at 1 - 1e-12
    assert sigmoid(0.0) == 0.5 and sigmoid(np.log(3.0)) == pytest.approx(0.75)
    assert sigmoid(np.array([1], dtype=np.int64)).dtype == np.float64


def test_mean_and_trimmed_mean_cut_a_fifth_at_each_end():
    assert mean_strategy(np.array([0.1, 0.2, 0.6])) == pytest.approx(0.3)
    ten = np.array([0.0, 0.0, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 1.0, 1.0])[::-1]
    assert trimmed_mean_strategy(ten) == pytest.approx(0.5)  # two cut at each end
    assert trimmed_mean_strategy(np.array([0.0, 0.2, 1.0, 0.6])) == pytest.approx(0.45)  # int(0.8): none cut
    assert trimmed_mean_strategy(ten, share=0.4) == pytest.approx(0.5)
    assert logit_mean_strategy(np.array([0.9, 0.5])) == pytest.approx(0.75)  # odds 9 and 1: geometric mean 3


def test_confident_strategy_thresholds_at_32_frames():
    def frames(high: int, low: int, middle: float = 0.5) -> np.ndarray:
        return np.array([0.9] * high + [0.1] * low + [middle] * (32 - high - low))

    assert confident_strategy(frames(13, 0)) == pytest.approx(0.9)  # 13 > 32 // 2.5 = 12 and > 11
    assert confident_strategy(frames(12, 0)) == pytest.approx(frames(12, 0).mean())
    assert confident_strategy(frames(0, 29)) == pytest.approx(0.1)  # 29 > 0.9 * 32
    assert confident_strategy(frames(0, 28)) == pytest.approx(frames(0, 28).mean())
    at_threshold = np.array([0.8] * 20 + [0.2] * 12)  # neither above 0.8 nor below 0.2
    assert confident_strategy(at_threshold) == pytest.approx(at_threshold.mean())
    assert confident_strategy(frames(15, 0), min_fakes=20) == pytest.approx(frames(15, 0).mean())
    assert confident_strategy(frames(21, 0), min_fakes=20) == pytest.approx(0.9)
    assert confident_strategy(frames(20, 0), min_fakes=20) == pytest.approx(frames(20, 0).mean())  # not over 20
    with_threshold = np.array([0.9] * 13 + [0.8] * 5 + [0.5] * 14)  # 0.8 itself is not above the threshold
    assert confident_strategy(with_threshold) == pytest.approx(0.9)
    at_low_bound = np.array([0.25] * 29 + [0.5] * 3)  # 0.25 is not below 1 - 0.75
    assert confident_strategy(at_low_bound, threshold=0.75) == pytest.approx(at_low_bound.mean())
    ten = np.array([0.1] * 9 + [0.5])  # 9 low of 10 is not over 0.9 * 10
    assert confident_strategy(ten) == pytest.approx(0.14)
    assert confident_strategy(frames(13, 0, 0.75), threshold=0.7) == pytest.approx((13 * 0.9 + 19 * 0.75) / 32)


def test_persons_without_frames_are_left_out_and_no_face_is_an_error():
    assert person_scores({0: np.array([]), 3: np.array([0.2, 0.4])}) == {3: pytest.approx(0.3)}
    assert person_scores({0: np.array([0.9] * 13 + [0.5] * 19)}, "confident") == {0: pytest.approx(0.9)}
    with pytest.raises(ValueError, match=r"^unknown aggregation 'median'; choose one of \['confident', 'logit_mean', "
                                         r"'mean', 'trimmed_mean'\]$"):
        person_scores({0: np.array([0.5])}, "median")
    with pytest.raises(ValueError, match="^no face scores to aggregate$"):
        video_score({0: np.array([])})
    with pytest.raises(ValueError, match="^no face scores to build features from$"):
        video_features({0: np.array([])})


def test_features_are_those_of_the_most_fake_person_by_the_aggregation():
    persons = {0: np.array([0.1, 0.7]), 1: np.array([0.5, 0.5, 0.9, 0.15])}
    assert video_features(persons) == {"logit": pytest.approx(float(np.log(0.5125 / 0.4875))),
                                       "mean": pytest.approx(0.5125), "std": pytest.approx(np.std([0.5, 0.5, 0.9, 0.15])),
                                       "share_above_0.8": 0.25, "share_below_0.2": 0.25}
    assert video_features(persons, "trimmed_mean")["mean"] == pytest.approx(0.5125)  # person 1 still the top
    first_is_top = {0: np.array([0.9, 0.8]), 1: np.array([0.3, 0.5])}
    assert video_features(first_is_top)["mean"] == pytest.approx(0.85)  # the most fake person, not the last
    five = {0: np.array([0.0, 0.1, 0.5, 0.9, 1.0])}  # trimmed: 0.1, 0.5, 0.9
    assert video_score(five, "trimmed_mean") == pytest.approx(0.5) and video_score(five) == pytest.approx(0.5)
    assert video_score(five, "logit_mean") == pytest.approx(0.5) and video_score({0: np.array([0.9, 0.5, 0.4])},
                                                                                 "trimmed_mean") == pytest.approx(0.6)
    skewed = {0: np.array([0.0, 0.2, 0.3, 0.4, 1.0])}  # mean 0.38, trimmed mean 0.3
    assert video_features(skewed, "trimmed_mean")["logit"] == pytest.approx(float(logit(0.3)))
    assert video_score(skewed, "trimmed_mean") == pytest.approx(0.3)
    assert video_features({0: np.array([0.8, 0.2])})["share_above_0.8"] == 0.0  # strict bounds
    assert video_features({0: np.array([0.8, 0.2])})["share_below_0.2"] == 0.0
    assert feature_name("effb0", "logit") == "effb0.logit"


def test_the_stacker_applies_each_coefficient_to_its_own_feature_in_the_files_order(tmp_path):
    path = tmp_path / "stacker.json"
    names, coef = ["z.logit", "a.logit", "m.mean"], [1.0, -2.0, 0.5]
    path.write_text(json.dumps({"feature_names": names, "coef": coef, "intercept": -0.25, "aggregation": "confident",
                                "target_prior": 0.5}))
    stacker = Stacker.from_json(path)
    features = {"a.logit": 0.4, "m.mean": 0.9, "z.logit": -1.2, "other.logit": 5.0}
    logit_sum = 1.0 * -1.2 - 2.0 * 0.4 + 0.5 * 0.9 - 0.25
    assert stacker.predict_one(features) == pytest.approx(1 / (1 + np.exp(-logit_sum)))
    assert stacker.predict(np.array([[-1.2, 0.4, 0.9], [0.0, 0.0, 0.0]])) == pytest.approx(
        [1 / (1 + np.exp(-logit_sum)), 1 / (1 + np.exp(0.25))])
    assert (stacker.aggregation, stacker.target_prior, stacker.groups) == ("confident", 0.5, ["z", "a", "m"])
    with pytest.raises(KeyError, match=r"stacker needs features \['a.logit'\]; check the manifest's model groups"):
        stacker.predict_one({"z.logit": 1.0, "m.mean": 0.5})
    with pytest.raises(ValueError, match="^stacker has 2 feature names but 1 coefficients$"):
        Stacker(["a.logit", "b.logit"], [1.0], 0.0)


def test_the_variant_fitted_on_the_most_groups_left_is_chosen(tmp_path):
    path = tmp_path / "stacker.json"
    variant = {"a": (["a.logit"], [1.0]), "b": (["b.logit"], [2.0]), "ab": (["a.logit", "b.logit"], [3.0, 4.0])}
    path.write_text(json.dumps({
        "feature_names": ["a.logit", "b.logit", "c.logit"], "coef": [1.0, 1.0, 1.0], "intercept": 0.0,
        "aggregation": "mean", "target_prior": 0.4,
        "variants": [{"feature_names": names, "coef": coef, "intercept": 0.1} for names, coef in variant.values()]}))
    stacker = Stacker.from_json(path)
    assert [v.groups for v in stacker.variants] == [["a"], ["b"], ["a", "b"]]
    assert {(v.aggregation, v.target_prior, v.intercept) for v in stacker.variants} == {("mean", 0.4, 0.1)}
    assert stacker.for_groups(["c", "b", "a", "d"]) is stacker
    assert stacker.for_groups(["a", "b"]).coef.tolist() == [3.0, 4.0]
    assert stacker.for_groups(["b", "c"]).coef.tolist() == [2.0]
    assert stacker.for_groups(["c"]) is None
    twin = Stacker(["a.logit"], [9.0], 0.0, variants=(Stacker(["a.logit"], [1.0], 0.0),))
    assert twin.for_groups(["a"]) is twin  # itself first on a tie
    path.write_text(json.dumps({"feature_names": ["a.logit"], "coef": [1.0], "intercept": 0.0,
                                "variants": [{"feature_names": ["a.logit"], "coef": [1.0]}]}))
    with pytest.raises(ValueError, match=r"stacker JSON \(or one of its variants\) lacks 'intercept'"):
        Stacker.from_json(path)
    assert Stacker(["a.logit"], [1], 2).intercept == 2.0 and Stacker(["a.logit"], [1], 2).variants == ()


def test_every_score_is_computed_in_float64_whatever_the_models_give():
    """The models give float32 P(fake); each aggregation, feature and the stacker work on them in float64."""
    probs = np.random.default_rng(3).uniform(0.05, 0.95, 32).astype(np.float32)
    exact = probs.astype(np.float64)
    assert np.mean(probs) != np.mean(exact)  # float32 arithmetic would show
    assert trimmed_mean_strategy(probs) == trimmed_mean_strategy(exact)
    assert confident_strategy(probs) == confident_strategy(exact) == np.mean(exact)
    assert logit(probs).tolist() == logit(exact).tolist() and sigmoid(probs).tolist() == sigmoid(exact).tolist()
    assert video_features({0: probs}) == video_features({0: exact})
