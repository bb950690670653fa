"""Stage `pretrained`: convert the ImageNet EfficientNet-Lite0, Lite1 and Lite2 weights that
ship inside packages to timm's tf_efficientnet_lite0/1/2 layouts, once, as safetensors. No
network access is needed."""

from importlib.metadata import version

from medimg.errors import run
from medimg.params import load_params
from medimg.training.models import (
    PACKAGED,
    convert_packaged,
    packaged_source,
    packaged_weights,
    save_weights,
)


def main() -> None:
    load_params()  # every stage stops on a params error before any work
    for name, model_file in PACKAGED.items():
        state = convert_packaged(name, packaged_source(name))
        package = model_file.__module__.split(".")[0].replace("_", "-")
        save_weights(packaged_weights(name), state,
                     f"{package} {version(package)} in timm's {name} layout")
        print(f"pretrained: wrote {len(state)} tensors to {packaged_weights(name)}")


if __name__ == "__main__":
    run(main)
