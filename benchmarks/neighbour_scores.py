"""How far apart the dedup stage's scores put neighbouring slices and edited copies;
writes benchmarks/results/neighbour_scores.json and docs/images/neighbour_scores.png.

    python -m benchmarks.neighbour_scores

Neighbouring slices of one volume (the sample's MRI slices, one and two slices apart) are
different acquisitions and must all be kept; edited copies of slices (every edit of
`medimg/data/synthetic_edits.py`, each on COPIES_PER_EDIT slices drawn with PLANT_SEED)
must all be removed. Every hypothesis the stage makes is scored with its bar at 0, so
each pair's best score against each of the three bars is known: the near-duplicate
check's (`dedup.near_correlation`), the registered view check's and the barely-moved
local check's (`dedup.edit_correlation`) and the local check's for crops and turns
(`dedup.crop_correlation`). A bar sits right when every neighbour scores below it and
every copy at or above it on at least one check.
"""

import re
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from medimg.data import catalog
from medimg.data.catalog import (
    Candidate,
    Pictures,
    Thresholds,
    confirmed_pairs,
    describe,
    fine_grey,
)
from medimg.data.perceptual import phash_values
from medimg.data.synthetic_edits import ALL_EDITS
from medimg.docs import results_file
from medimg.io import atomic_path, write_json
from medimg.params import load_params

matplotlib.use("Agg")
from matplotlib import pyplot as plt

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data/sample"
FIGURE = REPO / "docs/images/neighbour_scores.png"
COPIES_PER_EDIT = 5
PLANT_SEED = 1
SLICE = re.compile(r"mri/(?P<volume>.+)_(?P<index>\d+)\.png")
CHECKS = ("near", "view", "local_barely_moved", "local")


def best_scores(paths: list[str], raw: Path) -> dict[tuple[int, int], dict[str, float]]:
    """Each pair's best score by check, for every pair any check looked at."""
    described = [describe(path, raw, 16, 89478485) for path in paths]
    thumbs = np.stack([d["thumb"] for d in described])
    hashes = phash_values([d["phash"] for d in described])
    pictures = Pictures([d["grey"] for d in described], [d["views"] for d in described],
                        [d["features"] for d in described], paths,
                        partial(fine_grey, raw, 89478485))
    best: dict[tuple[int, int], dict[str, float]] = {}

    def note(i: int, j: int, check: str, score: float) -> None:
        scores = best.setdefault((min(i, j), max(i, j)), {})
        scores[check] = max(score, scores.get(check, -1.0))

    first, second, scores = confirmed_pairs(hashes, thumbs, 8, -1.0)
    for i, j, score in zip(first.tolist(), second.tolist(), scores.tolist(), strict=True):
        note(i, j, "near", score)
    checked = {}
    real_check_all = catalog.check_all

    def recording(pictures, hypotheses, *args, **kwargs):
        checked["pairs"] = list(zip(hypotheses, real_check_all(pictures, hypotheses, *args,
                                                               **kwargs), strict=True))
        return [(0.0, "")] * len(hypotheses)

    catalog.check_all = recording
    try:
        catalog.edited_pairs(pictures, Thresholds(8, 0.0, 6, 0.0, 0.0), set(), workers=2)
    finally:
        catalog.check_all = real_check_all
    for hypothesis, (score, _) in checked["pairs"]:
        if isinstance(hypothesis, Candidate):
            kind = "local_barely_moved" if hypothesis.barely_moved() else "local"
            note(hypothesis.first, hypothesis.second, kind, score)
        else:
            note(hypothesis[0], hypothesis[2], "view", score)
    return best


def main() -> None:
    params = load_params(REPO / "params.yaml").dedup
    if not SAMPLE.is_dir():
        subprocess.run([sys.executable, "stages/sample.py"], cwd=REPO, check=True)
    slices = sorted(str(p.relative_to(SAMPLE)) for p in (SAMPLE / "mri").glob("*.png"))
    where = {path: SLICE.fullmatch(path) for path in slices}
    rng = np.random.default_rng(PLANT_SEED)
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder)
        for path in slices:
            (raw / path).parent.mkdir(parents=True, exist_ok=True)
            (raw / path).symlink_to(SAMPLE / path)
        planted = []
        for number, (edit, original) in enumerate(
                (name, str(rng.choice(slices))) for name in ALL_EDITS
                for _ in range(COPIES_PER_EDIT)):
            image = Image.open(SAMPLE / original).convert("RGB")
            copy = f"copies/{number:04d}.png"
            (raw / copy).parent.mkdir(exist_ok=True)
            ALL_EDITS[edit](image, rng).save(raw / copy)
            planted.append((edit, copy, original))
        paths = slices + [copy for _, copy, _ in planted]
        best = best_scores(paths, raw)
    at = {path: i for i, path in enumerate(paths)}
    neighbours = []
    for a in slices:
        for b in slices:
            same = where[a]["volume"] == where[b]["volume"]
            gap = int(where[b]["index"]) - int(where[a]["index"])
            if same and gap in (1, 2):
                scores = best.get((at[a], at[b]), {})
                neighbours.append({"a": a, "b": b, "apart": gap,
                                   **{check: scores.get(check) for check in CHECKS}})
    copies = []
    for edit, copy, original in planted:
        scores = best.get((min(at[copy], at[original]), max(at[copy], at[original])), {})
        copies.append({"edit": edit, "copy": copy, "original": original,
                       **{check: scores.get(check) for check in CHECKS}})
    bars = {"near": params.near_correlation, "view": params.edit_correlation,
            "local_barely_moved": params.edit_correlation, "local": params.crop_correlation}
    summary = {}
    for check in CHECKS:
        near = [row[check] for row in neighbours if row[check] is not None]
        copied = [row[check] for row in copies if row[check] is not None]
        summary[check] = {"bar": bars[check], "neighbour_pairs_scored": len(near),
                          "neighbour_max": max(near, default=None),
                          "neighbours_at_or_above_bar": sum(s >= bars[check] for s in near),
                          "copies_scored": len(copied)}
    caught = [any(row[c] is not None and row[c] >= bars[c] for c in CHECKS) for row in copies]
    removed = [any(row[c] is not None and row[c] >= bars[c] for c in CHECKS)
               for row in neighbours]
    lowest = {}
    for row in copies:
        margin = max((row[c] - bars[c] for c in CHECKS if row[c] is not None), default=None)
        lowest[row["edit"]] = min(lowest.get(row["edit"], 1.0),
                                  margin if margin is not None else -1.0)
    results = {
        "neighbour_pairs": len(neighbours), "neighbours_removed": int(sum(removed)),
        "copies": len(copies), "copies_caught": int(sum(caught)),
        "copies_per_edit": COPIES_PER_EDIT, "seed": PLANT_SEED, "checks": summary,
        "lowest_margin_by_edit": {edit: round(value, 4) for edit, value in lowest.items()},
        "neighbour_scores": neighbours, "copy_scores": copies,
    }
    write_json(REPO / "benchmarks/results/neighbour_scores.json", results)
    figure(neighbours, copies, bars)
    print(f"neighbours removed {results['neighbours_removed']} of {len(neighbours)}; "
          f"copies caught {results['copies_caught']} of {len(copies)}")
    for check, row in summary.items():
        print(check, row)


def figure(neighbours: list[dict], copies: list[dict], bars: dict[str, float]) -> None:
    """One panel per check: the two histograms of scores above 0.9 and the bar."""
    shown = [check for check in CHECKS if any(row[check] for row in neighbours + copies)]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.2), squeeze=False)
    edges = np.linspace(0.9, 1.0, 41)
    for axis, check in zip(axes[0], shown, strict=True):
        for rows, label in ((neighbours, "neighbouring slices"), (copies, "edited copies")):
            values = np.clip([row[check] for row in rows if row[check] is not None], 0.9, 1.0)
            axis.hist(values, bins=edges, alpha=0.6, label=f"{label} ({len(values)})")
        axis.axvline(bars[check], color="black", linestyle="--", label=f"bar {bars[check]}")
        axis.set_title(check.replace("_", " "))
        axis.set_xlabel("best score (below 0.9 shown at 0.9)")
        axis.set_yscale("log")
        axis.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(FIGURE) as target:
        fig.savefig(target, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()


def scores_markdown(root: Path) -> str:
    bench = results_file(root, "neighbour_scores.json")
    names = {"near": "near duplicate (thumbnail detail)", "view": "registered view",
             "local_barely_moved": "local features, barely moved",
             "local": "local features, crop or turn"}
    lines = [
        f"`python -m benchmarks.neighbour_scores`: {bench['neighbour_pairs']} pairs of "
        "neighbouring slices (one or two apart in one volume of the sample) and "
        f"{bench['copies']} edited copies of its slices ({bench['copies_per_edit']} per edit "
        f"of `medimg/data/synthetic_edits.py`, seed {bench['seed']}); each pair's best score "
        "on each check, every hypothesis scored:",
        "",
        "| check | bar | neighbour pairs scored | best neighbour | neighbours at or above "
        "the bar | copies scored |",
        "|---|---|---|---|---|---|",
    ]
    for check, row in bench["checks"].items():
        best = "" if row["neighbour_max"] is None else f"{row['neighbour_max']:.4f}"
        lines.append(f"| {names[check]} | {row['bar']} | {row['neighbour_pairs_scored']} | "
                     f"{best} | {row['neighbours_at_or_above_bar']} | {row['copies_scored']} |")
    lines += ["", f"Neighbouring slices removed: {bench['neighbours_removed']} of "
              f"{bench['neighbour_pairs']} pairs; copies removed by these checks: "
              f"{bench['copies_caught']} of {bench['copies']}.",
              "", "![Best scores of neighbouring slices and edited copies, by check]"
              "(images/neighbour_scores.png)"]
    return "\n".join(lines)
