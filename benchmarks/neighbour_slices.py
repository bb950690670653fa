"""How many neighbouring slices of one scan the similarity groups keep together.

In the Brain Tumor MRI set, files with numbers 1 or 2 apart in one folder (`gg (681).jpg`,
`gg (682).jpg`) are often neighbouring slices of one scan. Those that look alike must end
in one split group, or a scan straddles train and test. `neighbour_figures` measures that
on the dedup stage's outputs (data/dedup/catalog.csv and thumbs.npy); beside a catalog
from other code (`before`) it also counts the pairs of images that share a group only in
one of the two, the pairs that a person should look at (`newly_joined_pairs`).
`benchmarks/dedup_benchmark.py` reports it.
"""

import re

import numpy as np
import pandas as pd

from medimg.data.catalog import similarity_report

# Plain Pearson correlation of the two 64x64 thumbnails (all pixels, no band filter, no
# hash) from which a neighbouring pair "looks alike". Calibrated by eye on neighbouring
# pairs of the MRI set (random samples per band, whole images side by side): at 0.85-0.90
# all 20 pairs looked at were slices of one scan, at 0.80-0.85 14 of 20, at 0.75-0.80 4 of
# 8, at 0.60-0.70 3 of 8. Above 0.90 the pairs are plainly one scan.
LOOK_ALIKE = 0.85
SHARE_LEVELS = (0.8, 0.85, 0.9, 0.95)
MAX_GAP = 2  # numbers at most this far apart are neighbours
NUMBERED = re.compile(r"^(?P<head>.*?)(?P<number>\d+)(?P<tail>\D*)$")  # the last number


def neighbour_pairs(paths: pd.Series, max_gap: int = MAX_GAP) -> pd.DataFrame:
    """Rows (first, second) of files in one folder whose names differ only in their last
    number, by 1 to `max_gap` (`gg (681).jpg` and `gg (683).jpg`, not `m1 (5).jpg` and
    `m2 (5).jpg`), with the `gap`."""
    found = pd.Series(paths.to_numpy()).str.extract(NUMBERED)
    table = pd.DataFrame({"pattern": found["head"] + "#" + found["tail"],
                          "number": pd.to_numeric(found["number"]),
                          "row": np.arange(len(paths))}).dropna()
    pairs = []
    for gap in range(1, max_gap + 1):
        ahead = table.assign(number=table["number"] - gap)
        joined = table.merge(ahead, on=["pattern", "number"], suffixes=("_first", "_second"))
        pairs.append(pd.DataFrame({"first": joined["row_first"], "second": joined["row_second"],
                                   "gap": gap}))
    return pd.concat(pairs, ignore_index=True).sort_values(["first", "second"],
                                                           ignore_index=True)


def plain_correlation(thumbs: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson correlation of whole thumbnails, pair by pair."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    unit = np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)
    return np.einsum("ij,ij->i", unit[first], unit[second])


def neighbour_figures(catalog: pd.DataFrame, thumbs: np.ndarray,
                      before: tuple[pd.DataFrame, np.ndarray] | None = None) -> dict:
    """Neighbouring-file pairs, how many look alike and how many of those share a split
    group, with the similarity report's checks against joining strangers.

    `catalog` is data/dedup/catalog.csv (read as strings) and `thumbs` data/dedup/thumbs.npy,
    the 64x64 greyscale thumbnails in catalog order. "Looks alike" is the plain Pearson
    correlation of the two whole thumbnails at LOOK_ALIKE or above. It is deliberately
    not the grouping's own edge test (pHash radius, band-passed detail correlation,
    linkage): a criterion that the grouping optimises would measure nothing. Whole-image
    correlation sees what a person sees first (head outline, position, contrast, the
    lesion), and was set by looking at neighbouring pairs by eye (see LOOK_ALIKE). It is
    a yardstick for neighbouring files only: among arbitrary pairs, other patients' scans
    of the same protocol reach it too.

    Against joining strangers: `cross_class` counts groups that span two classes (a scan
    has one diagnosis, so such a group is a false join or a label conflict), `largest` is
    the largest group. With `before`, a catalog of the same images from other code,
    `before` holds its figures and `newly_joined` counts the pairs of images that share a
    group here but not there (how many of them are neighbouring files, how many span two
    classes), the pairs to look at by eye (`newly_joined_pairs`), and `newly_parted` the
    pairs that shared a group there but no longer do. `before` is that catalog with its
    thumbnails (other code may keep other images).
    """
    pairs = neighbour_pairs(catalog["path"])
    first, second = pairs["first"].to_numpy(), pairs["second"].to_numpy()
    plain = plain_correlation(thumbs, first, second)
    alike = plain >= LOOK_ALIKE
    group = catalog["group"].to_numpy()
    together = group[first] == group[second]
    report = similarity_report(catalog)
    figures = {
        "neighbour_pairs": len(pairs),
        "look_alike": int(alike.sum()),
        "look_alike_in_one_group": int((alike & together).sum()),
        "share_in_one_group": round(float((alike & together).sum() / max(alike.sum(), 1)), 4),
        "other_neighbours_in_one_group": int((~alike & together).sum()),
        # the share at other levels of the yardstick: a change should not hinge on one
        "share_by_level": {f"{level:.2f}": round(float(together[plain >= level].mean()), 4)
                           for level in SHARE_LEVELS if (plain >= level).any()},
        "cross_class": report["cross_class"],
        "largest": report["largest"],
        "groups": report["groups"],
        "images_in_groups": report["images"],
        "sizes": report["sizes"],
    }
    if before is None:
        return figures
    before, before_thumbs = before
    new = newly_joined_pairs(before, catalog)
    neighbours = set(zip(catalog["path"].to_numpy()[first], catalog["path"].to_numpy()[second],
                         strict=True))
    is_neighbour = [(a, b) in neighbours or (b, a) in neighbours
                    for a, b in zip(new["first"], new["second"], strict=True)]
    return {"now": figures, "before": neighbour_figures(before, before_thumbs),
            "newly_joined": {"pairs": len(new), "neighbouring_files": int(np.sum(is_neighbour)),
                             "cross_class": int((new["class_first"] != new["class_second"])
                                                .sum())},
            "newly_parted": {"pairs": len(newly_joined_pairs(catalog, before))}}


def together_pairs(catalog: pd.DataFrame) -> set[tuple[str, str]]:
    """Every pair of paths (a < b) that shares a split group."""
    out: set[tuple[str, str]] = set()
    for members in catalog.groupby("group")["path"]:
        names = sorted(members[1])
        out.update((a, b) for i, a in enumerate(names) for b in names[i + 1:])
    return out


def newly_joined_pairs(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Pairs of paths in one group in `after` but not in `before` (both catalogs of the
    same images), with each one's class."""
    new = sorted(together_pairs(after) - together_pairs(before))
    label = after.set_index("path")["class"]
    frame = pd.DataFrame(new, columns=["first", "second"])
    return frame.assign(class_first=frame["first"].map(label).to_numpy(),
                        class_second=frame["second"].map(label).to_numpy())
