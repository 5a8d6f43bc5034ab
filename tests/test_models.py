import json

import pytest
import torch

from dfdc_core.manifest import Manifest, ManifestError, model_family, verify_manifest
from dfdc_core.models import create_classifier, load_classifier, save_fp16_state_dict


@pytest.mark.parametrize("arch,family", [("legacy_xception", "xception"), ("xception41", "xception"),
                                         ("efficientnet_b0", "efficientnet"),
                                         ("tf_efficientnet_lite0", "efficientnet"), ("resnet34", "resnet")])
def test_families(arch, family):
    assert model_family(arch) == family


def test_unsupported_arch_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="vit_base_patch16_224.*xception"):
        create_classifier("vit_base_patch16_224")


@pytest.mark.parametrize("arch,size", [("legacy_xception", 64), ("efficientnet_b0", 64), ("resnet18", 64)])
@pytest.mark.slow
def test_each_family_builds_a_single_logit_head(arch, size):
    model = create_classifier(arch).eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 1)


def test_fp16_weights_load_on_cpu_as_fp32_with_the_same_outputs(tiny_manifest_path):
    manifest = Manifest.load(tiny_manifest_path)
    verify_manifest(manifest)
    spec = manifest.models[0]
    model = load_classifier(spec, "cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reference = create_classifier(spec.arch).eval()
    reference.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in torch.load(spec.file, weights_only=True).items()})
    x = torch.randn(2, 3, spec.input_size, spec.input_size)
    with torch.inference_mode():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_weights_of_another_arch_are_refused(tmp_path, tiny_manifest_path):
    data = json.loads(tiny_manifest_path.read_text())
    data["models"][0]["arch"] = "resnet18"
    data["models"][0]["file"] = str(tiny_manifest_path.parent / data["models"][0]["file"])
    path = tmp_path / "weights_manifest.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="does not fit arch 'resnet18'"):
        load_classifier(Manifest.load(path).models[0])


def test_save_fp16_is_atomic_and_halves_floats(tmp_path):
    model = create_classifier("test_resnet")
    save_fp16_state_dict(model, tmp_path / "w.pth")
    state = torch.load(tmp_path / "w.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert list(tmp_path.iterdir()) == [tmp_path / "w.pth"]
    assert all(v.is_contiguous() for v in state.values())  # the file does not depend on the model's layout


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_resnet"])
def test_classifiers_are_channels_last_on_cpu_and_after_loading(arch, tmp_path, tiny_manifest_path):
    convolutions = [m.weight for m in create_classifier(arch).modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    loaded = load_classifier(Manifest.load(tiny_manifest_path).models[0], "cpu")
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in loaded.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
