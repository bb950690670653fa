import json
import subprocess
import sys
import warnings
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.metrics import log_loss

from medimg.data.prepared import resize_square
from medimg.errors import ModelError, ParamsError
from medimg.inference import Classifier, TorchBackend
from medimg.training.models import (
    ModelConfig,
    Normalisation,
    convert_packaged,
    create_model,
    load_checkpoint,
    normalisation,
    packaged_source,
    packaged_weights,
    probabilities,
    save_checkpoint,
    save_weights,
)

TINY = "test_efficientnet"


LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def packaged_dir(tmp_path_factory) -> Path:
    """A models/pretrained folder with the converted Lite0 weights."""
    folder = tmp_path_factory.mktemp("pretrained")
    save_weights(folder / packaged_weights(LITE0).name,
                 convert_packaged(LITE0, packaged_source(LITE0)), "lite0")
    return folder


@pytest.fixture(scope="module")
def lite0_weights(packaged_dir: Path) -> Path:
    return packaged_dir / packaged_weights(LITE0).name


def test_conversion_is_byte_for_byte_repeatable(lite0_weights, tmp_path) -> None:
    again = tmp_path / "again.safetensors"
    save_weights(again, convert_packaged(LITE0, packaged_source(LITE0)), "lite0")
    assert again.read_bytes() == lite0_weights.read_bytes()


@pytest.mark.parametrize(("name", "size"), [(LITE0, 224), ("tf_efficientnet_lite1", 240),
                                            ("tf_efficientnet_lite2", 260)])
def test_converted_packaged_weights_know_imagenet(name, size, tmp_path) -> None:
    weights = tmp_path / "weights.safetensors"
    save_weights(weights, convert_packaged(name, packaged_source(name)), name)
    model = timm.create_model(name, pretrained=True,
                              pretrained_cfg_overlay={"file": str(weights)}).eval()
    assert model.pretrained_cfg["input_size"] == (3, size, size)
    image = Image.open(str(files("skimage") / "data" / "chelsea.png")).convert("RGB")
    pixels = resize_square(np.asarray(image), size, "squash")
    probs = Classifier(TorchBackend(model), Normalisation(**normalisation(model))).predict(
        pixels[None], 1)[0]
    assert int(probs.argmax()) == 285  # Egyptian cat
    assert float(probs[285]) > 0.5


def test_packaged_model_gets_backbone_weights_and_a_new_head(packaged_dir,
                                                             lite0_weights) -> None:
    model = create_model(LITE0, "packaged", 2, packaged_dir=packaged_dir)
    reference = convert_packaged(LITE0, packaged_source(LITE0))
    assert torch.equal(model.conv_stem.weight, reference["conv_stem.weight"])
    assert model.get_classifier().out_features == 1
    four = create_model("tf_efficientnet_lite0", str(lite0_weights), 4)
    assert four.get_classifier().out_features == 4
    assert torch.equal(four.conv_stem.weight, reference["conv_stem.weight"])
    # A new head starts at zero: every class at equal odds, not logits in the tens.
    for head in (model.get_classifier(), four.get_classifier()):
        assert not head.weight.any() and not head.bias.any()
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(four.eval()(images), torch.zeros(2, 4))
    # The full ImageNet head is the pretrained one, kept as it is.
    imagenet = create_model("tf_efficientnet_lite0", str(lite0_weights), 1000)
    assert torch.equal(imagenet.get_classifier().weight, reference["classifier.weight"])
    assert create_model(TINY, "none", 4).get_classifier().weight.any()  # random init stays


def test_pretrained_sources_fail_clearly(tmp_path) -> None:
    with pytest.raises(ParamsError, match="'packaged' weights exist only for"):
        create_model(TINY, "packaged", 2)
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model(TINY, str(tmp_path / "absent.safetensors"), 2)
    assert create_model(TINY, "none", 3).get_classifier().out_features == 3


def test_hub_source_uses_timms_download_path_offline(tmp_path) -> None:
    # Lay out a Hugging Face cache holding the tiny model's weights, then load with the
    # hub switched offline: the code path is timm's real hub download, served locally.
    source = timm.create_model(TINY, pretrained=False)
    torch.nn.init.constant_(source.conv_stem.weight, 0.125)
    repo = tmp_path / "hub" / f"models--timm--{source.pretrained_cfg['hf_hub_id'].split('/')[1]}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    code = (
        "from medimg.training.models import create_model\n"
        f"m = create_model('{TINY}', 'hub', 2)\n"
        "print(float(m.conv_stem.weight.mean()), m.get_classifier().out_features)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.125", "1"]


def test_checkpoint_round_trip_gives_identical_logits(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(TINY, "none", 2).eval()
    config = ModelConfig(model=TINY, classes=["a", "b"], image_size=32, resize="squash",
                         decode={"max_pixels": 10**6, "min_side": 16}, **normalisation(model))
    save_checkpoint(tmp_path, model, config)
    loaded, loaded_config = load_checkpoint(tmp_path)
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(images), loaded(images))
    assert loaded_config == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


def test_probabilities_for_both_head_layouts() -> None:
    binary = probabilities(torch.tensor([[0.0], [2.0]]))
    assert torch.allclose(binary.sum(dim=1), torch.ones(2, dtype=torch.float64))
    assert binary[1, 1] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    multi = probabilities(torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(multi, torch.softmax(torch.tensor([[1.0, 2.0, 3.0]]), dim=1).double())


def test_probabilities_sum_to_one_as_scikit_learn_checks() -> None:
    logits = torch.randn(2000, 7, generator=torch.Generator().manual_seed(0)) * 8
    probs = probabilities(logits).numpy()
    labels = np.arange(2000) % 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "y_prob values do not sum to one" would raise
        log_loss(labels, probs, labels=np.arange(7))
    assert np.abs(probs.sum(axis=1) - 1.0).max() < 1e-12


def test_a_model_json_that_does_not_fit_stops_in_one_line_naming_the_file(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(TINY, "none", 2)
    save_checkpoint(tmp_path, model, ModelConfig(
        model=TINY, classes=["a", "b"], image_size=32, resize="squash",
        decode={"max_pixels": 10**6, "min_side": 16}, **normalisation(model)))
    config = json.loads((tmp_path / "model.json").read_text())
    del config["decode"]  # as an older train stage wrote it
    (tmp_path / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as stopped:
        load_checkpoint(tmp_path)
    message = str(stopped.value)
    assert message.startswith(f"{tmp_path / 'model.json'}: field required for 'decode'")
    assert "\n" not in message
