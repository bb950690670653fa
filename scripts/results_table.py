"""Write the result sections of the README and the docs from the committed metrics and
benchmark files (metrics/*.json, benchmarks/results/*.json), so no figure is typed by hand.

    python -m scripts.results_table          # rewrite the generated sections
    python -m scripts.results_table --check  # exit 1, naming each out-of-date file

Each results file has its renderer beside the code that writes it; the statistics are in
the file already, so a renderer only formats. A generated section sits between
`<!-- NAME:begin -->` and `<!-- NAME:end -->`; FILES says which renderer writes which
section of which file.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    clinical_benchmark,
    cpu_pins_benchmark,
    dedup_benchmark,
    dvc_benchmark,
    exp_show,
    inference_benchmark,
    loader_benchmark,
    neighbour_scores,
    ood_cost,
    ood_tradeoff,
    serve_benchmark,
    train_benchmark,
)
from benchmarks.gpu import stage_check
from benchmarks.real import experiments, leakage, run
from medimg.docs import Section, markers, update_files
from medimg.evaluation.headline import headline_markdown, shift_markdown

COMMAND = "python -m scripts.results_table"
RENDERERS: dict[str, dict[str, Callable[[Path], str]]] = {
    "README.md": {"results": headline_markdown,
                  "serve-table": serve_benchmark.serve_table_markdown,
                  "ood": ood_tradeoff.ood_markdown,
                  "real-table": run.real_table_markdown,
                  "task-b-experiments": experiments.experiments_markdown},
    "docs/serving.md": {"ood-curve": ood_tradeoff.ood_curve_markdown,
                        "ood-cost": ood_cost.cost_markdown},
    "docs/dvc.md": {"exp-show": exp_show.exp_show_markdown},
    "docs/pipeline.md": {"cpu-pins": cpu_pins_benchmark.cpu_pins_markdown,
                         "shift-sample": shift_markdown,
                         "neighbour-scores": neighbour_scores.scores_markdown},
    "docs/real-data.md": {"real-results": run.real_markdown,
                          "real-leakage": leakage.leakage_markdown,
                          "real-shift": run.shift_markdown,
                          "task-b-experiments-detail": experiments.experiments_detail_markdown},
    "benchmarks/README.md": {"dedup-benchmark": dedup_benchmark.dedup_markdown,
                             "clinical-benchmark": clinical_benchmark.clinical_markdown,
                             "loader-benchmark": loader_benchmark.loader_markdown,
                             "train-benchmark": train_benchmark.train_markdown,
                             "gpu-stage-check": stage_check.stage_check_markdown,
                             "inference-cuda": inference_benchmark.cuda_markdown,
                             "dvc-benchmark": dvc_benchmark.dvc_markdown,
                             "inference-benchmark": inference_benchmark.inference_markdown,
                             "serve-benchmark": serve_benchmark.serve_markdown},
}
FILES: dict[str, list[Section]] = {
    name: [(*markers(section), render) for section, render in sections.items()]
    for name, sections in RENDERERS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    return update_files(args.root, FILES, args.check, COMMAND)


if __name__ == "__main__":
    sys.exit(main())
