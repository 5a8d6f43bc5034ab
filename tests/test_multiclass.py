"""Method attribution: manifest class keys, P(fake) = 1 - P(real) in kernel and training, methods from names."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dfdc_core.manifest import Manifest, ManifestError, class_keys
from dfdc_core.models import fake_probability
from kernel.config import load_config
from kernel.explain import main as explain_main
from kernel.scorer import load_scorer
from tests.test_train import ARCH, write_config, write_synthetic_crops
from training.data.dataset import read_crop
from training.data.index import read_index
from training.data.methods import label_methods, method_of
from training.train_fold import main as train_main

CLASSES = ["A", "B", "real"]


def test_fake_probability_is_sigmoid_or_one_minus_p_real():
    logits = torch.randn(6, 1)
    assert torch.equal(fake_probability(logits), torch.sigmoid(logits[:, 0]))
    logits = torch.randn(6, 4) * 5
    for real in range(4):
        expected = 1 - torch.softmax(logits, dim=1)[:, real]
        assert torch.allclose(fake_probability(logits, real), expected, atol=1e-6)


def test_manifest_class_keys():
    assert class_keys({"arch": "x"}, "m") == {}
    keys = class_keys({"num_classes": 3, "classes": CLASSES, "real_class": "real"}, "m")
    assert keys == {"num_classes": 3, "classes": tuple(CLASSES), "real_index": 2}
    assert class_keys({"num_classes": 2, "real_class": 1}, "m")["real_index"] == 1
    with pytest.raises(ManifestError, match="not one of classes"):
        class_keys({"num_classes": 3, "classes": CLASSES, "real_class": "pristine"}, "m")
    with pytest.raises(ManifestError, match="2 names"):
        class_keys({"num_classes": 3, "classes": ["A", "real"], "real_class": "real"}, "m")


def test_methods_from_dev_style_names():
    expected = {"ffc40_df_183_253.mp4": "Deepfakes", "ffc23_f2f_750_743.mp4": "Face2Face",
                "ffc40_fs_469_481.mp4": "FaceSwap", "ffc40_nt_720_672.mp4": "NeuralTextures",
                "ffc40_yt_183.mp4": "real", "ffc40_actor_01__kitchen_pan.mp4": "real", "brtujopkby.mp4": ""}
    assert {name: method_of(name, 1) for name in expected} == expected
    assert method_of("abc.mp4", 0, "label") == "real" and method_of("abc.mp4", 1, "label") == "fake"
    index = pd.DataFrame({"video": ["ffc40_df_1_2.mp4", "ffc40_df_1_2.mp4", "x.mp4"], "label": [1, 1, 0]})
    assert label_methods(index)["method"].tolist() == ["Deepfakes", "Deepfakes", ""]


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    """One epoch of a 3-class tiny model on crops whose fakes are methods A and B, plus two unlabelled crops."""
    folder = tmp_path_factory.mktemp("multiclass")
    crops = write_synthetic_crops(folder / "crops", videos=12)
    index = read_index(crops / "index.csv")
    number = index["video"].str.extract(r"v(\d+)")[0].astype(int)
    index["method"] = np.where(index["label"] == 0, "real", np.where(number // 2 % 2, "B", "A"))
    index.loc[index["video"] == "v0.mp4", "method"] = ""
    index.to_csv(crops / "index.csv", index=False)
    config = write_config(folder, crops, num_classes=3, label_column="method", real_class="real", sampler="shuffle", class_weights=True,
                          label_smoothing=0.1)
    train_main(["--config", str(config), "--fold", "0"])
    return folder / "runs", crops


@pytest.mark.slow
def test_multiclass_training_writes_confusion_matrix_and_one_minus_p_real(three_class_run):
    runs, crops = three_class_run
    run = runs / f"{ARCH}_fold0"
    assert (run / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    matrix = pd.read_csv(run / "confusion_matrix.csv", index_col="true")
    assert matrix.index.tolist() == CLASSES and matrix.columns.tolist() == CLASSES
    oof = pd.read_csv(run / "oof.csv")
    assert oof.columns.tolist() == ["video", "frame", "person", "model", "group", "prob", "label", "p_A", "p_B", "p_real"]
    assert "v0.mp4" not in set(oof["video"])
    assert matrix.to_numpy().sum() == oof["video"].nunique()
    assert np.allclose(oof["prob"], 1 - oof["p_real"], atol=2e-6)
    assert np.allclose(oof[["p_A", "p_B", "p_real"]].sum(axis=1), 1, atol=5e-6)
    methods = read_index(crops / "index.csv").drop_duplicates("video").set_index("video")["method"]
    assert (oof["label"] == (oof["video"].map(methods) != "real")).all()
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"val_log_loss", "val_auc", "val_class_accuracy", "val_acc_A", "val_acc_B", "val_acc_real"} <= set(metrics)
    (entry,) = json.loads((runs / "weights_manifest.json").read_text())["models"]
    assert (entry["num_classes"], entry["classes"], entry["real_class"]) == (3, CLASSES, "real")
    saved = yaml.safe_load((run / "config.yaml").read_text())  # the classes the run learned, not the null given
    assert saved["classes"] == CLASSES


def test_kernel_scores_a_multiclass_model_as_one_minus_p_real(three_class_run):
    runs, crops = three_class_run
    scorer = load_scorer(Manifest.load(runs / "weights_manifest.json"), load_config())
    (model,) = scorer.models
    assert (model.spec.num_classes, model.spec.real_index) == (3, 2)
    oof = pd.read_csv(runs / f"{ARCH}_fold0" / "oof.csv")
    paths = oof.merge(read_index(crops / "index.csv"), on=["video", "frame", "person"])["path"]
    probs = scorer.classify_crops([read_crop(crops / path) for path in paths])[model.spec.name]
    assert np.allclose(probs, oof["prob"], atol=2e-6)
    assert np.allclose(probs, 1 - oof["p_real"], atol=4e-6)


def test_explain_a_crop_with_a_multiclass_model(three_class_run, tmp_path):
    runs, crops = three_class_run
    oof = pd.read_csv(runs / f"{ARCH}_fold0" / "oof.csv").merge(read_index(crops / "index.csv"),
                                                                 on=["video", "frame", "person"])
    row = oof.iloc[0]
    assert explain_main([str(crops / row["path"]), "--crop", "--manifest", str(runs / "weights_manifest.json"),
                         "--out", str(tmp_path)]) == 0
    data = json.loads(next(tmp_path.glob("*_explain.json")).read_text())
    assert data["models"][0]["num_classes"] == 3
    assert data["faces"][0]["probs"][row["model"]] == pytest.approx(row["prob"], abs=2e-6)
