"""Stage `prepare`: decode and resize each split once, so epochs only augment.

Writes data/prepared/{train,val,test}.npy (N x S x S x 3 uint8, S = prepare.image_size)
and data/prepared/{train,val,test}.csv (the split rows in the same order).
"""

import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medimg.data.prepared import prepare_image
from medimg.data.splitting import SPLITS
from medimg.errors import run
from medimg.io import atomic_dir
from medimg.parallel import process_map
from medimg.params import load_params

SPLIT = Path("data/split/split.csv")
OUT_DIR = Path("data/prepared")


def write_split(target: Path, paths: list[Path], size: int, policy: str, workers: int) -> None:
    array = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8,
                                      shape=(len(paths), size, size, 3))
    work = partial(prepare_image, size=size, policy=policy)
    for index, pixels in enumerate(process_map(work, paths, workers=workers, chunksize=16)):
        array[index] = pixels
    array.flush()
    del array


def main() -> None:
    params = load_params()
    prepare = params.prepare
    table = pd.read_csv(SPLIT, dtype={"group": str, "origin": str}, keep_default_na=False)
    raw_dir = Path(params.data.raw_dir)
    workers = prepare.workers or os.cpu_count() or 1
    with atomic_dir(OUT_DIR) as tmp:
        for name in SPLITS:
            part = table[table["split"] == name]
            write_split(tmp / f"{name}.npy", [raw_dir / p for p in part["path"]],
                        prepare.image_size, prepare.resize, workers)
            part.to_csv(tmp / f"{name}.csv", index=False, lineterminator="\n")
            print(f"prepare: {name} {len(part)} images at {prepare.image_size} px")


if __name__ == "__main__":
    run(main)
