"""Write the result sections of README.md, docs/real-data.md and benchmarks/README.md from
the committed metrics and benchmark files (metrics/*.json, benchmarks/results/*.json), so
no figure is typed by hand.

    python scripts/results_table.py          # rewrite the generated sections
    python scripts/results_table.py --check  # exit 1, naming each out-of-date file

A generated section sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; FILES says
which function writes which section of which file.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from medimg.docs import Section, markers, update_files
from medimg.evaluation.metrics import accuracy, macro_f1
from medimg.evaluation.scores import difference_interval, wilson_interval

BEGIN, END = markers("results")
REAL_TABLE_BEGIN, REAL_TABLE_END = markers("real-table")
REAL_BEGIN, REAL_END = markers("real-results")
DEDUP_BEGIN, DEDUP_END = markers("dedup-benchmark")
LOADER_BEGIN, LOADER_END = markers("loader-benchmark")
TRAIN_BEGIN, TRAIN_END = markers("train-benchmark")
DVC_BEGIN, DVC_END = markers("dvc-benchmark")
INFERENCE_BEGIN, INFERENCE_END = markers("inference-benchmark")
SERVE_BEGIN, SERVE_END = markers("serve-benchmark")
SERVE_TABLE_BEGIN, SERVE_TABLE_END = markers("serve-table")
SERVE_FILE = "serve_benchmark.json"
EXP_SHOW_BEGIN, EXP_SHOW_END = markers("exp-show")
OOD_BEGIN, OOD_END = markers("ood")
OOD_CURVE_BEGIN, OOD_CURVE_END = markers("ood-curve")
EXPERIMENTS_BEGIN, EXPERIMENTS_END = markers("task-b-experiments")
EXPERIMENTS_DETAIL_BEGIN, EXPERIMENTS_DETAIL_END = markers("task-b-experiments-detail")
EXPERIMENTS_FILE = "b_tumours_experiments.json"
CPU_PINS_BEGIN, CPU_PINS_END = markers("cpu-pins")
# The original notebook's reported figures (see ../shared/research/data-and-weights.md).
ORIGINAL = {"images": "3,264 MRI + 10,000 histopathology", "test_n": 1955, "test_errors": 0}
# Task: (baseline run, leaky run, what differs).
COMPARISONS = {
    "A": ("a_original", "a_original_leaky", "no de-duplication and no patient groups"),
    "B": ("b_tumours_clean", "b_tumours_leaky", "de-duplication and leakage removal off"),
    "C": ("c_idc_patient", "c_idc_patch", "patch-level instead of patient-level split"),
}


def load(root: Path, name: str, folder: str = "metrics") -> dict:
    with (root / folder / name).open(encoding="utf-8") as handle:
        return json.load(handle)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def interval(row: dict, name: str) -> str:
    value, low, high = row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high")
    if value is None:
        return "n/a"
    return f"{value:.4f} ({low:.4f} to {high:.4f})" if low is not None else f"{value:.4f}"


def results_markdown(root: Path) -> str:
    """The default run's headline figures: the DVC metrics files, which git holds."""
    dedup, split, train, test = (load(root, f"{n}.json")
                                 for n in ("dedup", "split", "train", "evaluate"))
    monitor = yaml.safe_load((root / "params.yaml").read_text())["train"]["monitor"]

    def cell(name: str) -> str:
        value, low, high = test[name], test.get(f"{name}_lo"), test.get(f"{name}_hi")
        return fmt(value) if low is None else f"{fmt(value)} ({fmt(low)} to {fmt(high)})"

    lines = [
        f"Data: {dedup['found']} images found, {dedup['kept']} kept after de-duplication; "
        f"split train {split['train']} / val {split['val']} / test {split['test']} images. "
        f"Best epoch {train['best_epoch']} ({monitor} {fmt(train['best'])}).", "",
        "| test split | value (95% CI) |", "|---|---|",
        f"| accuracy | {cell('acc')} |", f"| balanced accuracy | {cell('bal_acc')} |",
        f"| macro F1 | {cell('f1')} |", f"| ROC-AUC | {cell('auc')} |",
        f"| expected calibration error | {cell('ece')} |",
        f"| accuracy of the best trivial model (logistic regression on colour statistics "
        f"and size, or size alone) | {fmt(test['shortcut'])} |"]
    if test["shortcut"] >= 0.99:
        lines += ["", "A trivial model reaches at least 0.99 test accuracy: this task is "
                  "separable without looking at anatomy or tissue."]
    return "\n".join(lines)


def edit_names(names: list[str]) -> str:
    """The edits the stage named, with the rotations as one range."""
    turns = sorted(int(name.split()[-1]) for name in names if name.startswith("rotate "))
    shown = [f"`{name}`" if name else "(pixel-identical)" for name in names
             if not name.startswith("rotate ")]
    if turns:
        shown.append(f"`rotate N` for N from {turns[0]} to {turns[-1]}")
    return ", ".join(shown)


def dedup_markdown(root: Path) -> str:
    bench = load(root, "dedup.json", "benchmarks/results")
    mri, pngs = bench["brain_tumor_mri"], bench["generated_pngs"]
    keys = ("found", "kept", "exact_duplicates", "pixel_duplicates", "near_duplicates",
            "conflicts", "rejected", "ignored")
    lines = [
        "| stage | found | kept | exact | pixel | near | label conflicts | rejected | ignored |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {name} | " + " | ".join(str(counts[key]) for key in keys) + " |"
          for name, counts in (("before edited copies", mri["baseline_dedup_metrics"]),
                               ("now", mri["dedup_metrics"]))),
        "",
        f"The {len(mri['new_removals'])} removals the edited-copy search adds are listed in "
        "`benchmarks/results/dedup.json` (`new_removals`).",
        "",
        "Edited copies planted among the real images (`medimg/data/synthetic_edits.py`, "
        f"{bench['planted_edits']['per_edit']} per edit, each of a different original, seed "
        f"{bench['planted_edits']['seed']}):",
        "",
        "| edit | copies | removed as a copy of its own original | at least in its original's "
        "split group | removed against a wrong image | edit named |",
        "|---|---|---|---|---|---|",
    ]
    for edit, row in bench["planted_edits"]["edits"].items():
        named = edit_names(row["edits_named"])
        lines.append(f"| {edit} | {row['copies']} | {row['removed_with_original']} | "
                     f"{row['in_original_group']} | {row['removed_wrongly']} | {named} |")
    similar, before = mri["dedup_metrics"]["similarity"], mri["baseline_similarity"]
    lines += [
        "",
        "Similarity groups (neighbouring slices kept together for the split):",
        "",
        "| | groups | images in them | largest | groups spanning two classes |",
        "|---|---|---|---|---|",
        f"| before (single linkage) | {before['groups']} | {before['images']} | "
        f"{before['largest']} | {before['cross_class']} |",
        f"| now (average linkage on fine detail) | {similar['groups']} | {similar['images']} | "
        f"{similar['largest']} | {similar['cross_class']} |",
        "",
        "Group sizes now: " + ", ".join(f"{size}: {n}" for size, n in similar["sizes"].items())
        + ".",
        "",
        f"Speed on {bench['machine']['cpus']} cores (`benchmarks/dedup_benchmark.py`, whole "
        "stage including process start and contact sheets, best of three runs each):",
        "",
        "| input | files | stage seconds | stage images/s | plain MD5 loop images/s |",
        "|---|---|---|---|---|",
        f"| Brain Tumor MRI set, before edited copies were searched | {mri['files']} | "
        f"{mri['baseline_stage_seconds']} | "
        f"{round(mri['files'] / mri['baseline_stage_seconds'], 1)} | "
        f"{mri['md5_loop_images_per_s']} |",
        f"| Brain Tumor MRI set, now | {mri['files']} | {mri['stage_seconds']} | "
        f"{mri['stage_images_per_s']} | {mri['md5_loop_images_per_s']} |",
        f"| generated 50x50 PNGs, now | {pngs['files']} | {pngs['stage_seconds']} | "
        f"{pngs['stage_images_per_s']} | {pngs['md5_loop_images_per_s']} |",
        "",
        f"The stage now takes {mri['slowdown']}x as long as before on the MRI set.",
    ]
    for key, what in (("near_index", "Near-duplicate index"), ("view_index", "View index")):
        index = bench[key]
        lines.append("")
        lines.append(
            f"{what}: {index['images']:,} random images, {index['query_hashes_per_image']} "
            f"query and {index['index_hashes_per_image']} indexed hashes each, "
            f"{index['planted_pairs']} planted pairs within {index['max_distance']} bits: "
            f"{index['seconds']} s, {index['planted_missed']} planted pairs missed.")
    split = bench["brain_tumor_mri_respect_existing"]
    copies = split["test_copies_removed"]
    lines += ["", "With its own `Testing` folder kept (`split.respect_existing: Testing`): "
              f"{copies['test_images']} of the {split['test']['n']} de-duplicated test images "
              f"had copies on the training side: {copies['copies']} copies removed "
              f"({copies.get('exact', 0)} byte-identical, {copies.get('pixel', 0)} "
              f"pixel-identical, {copies.get('near', 0)} near), and {split['excluded']} more "
              "training images excluded for sharing a similarity group with a test image. "
              f"Train {split['train']['n']}, val {split['val']['n']}, test "
              f"{split['test']['n']}; overlap across splits: "
              + ", ".join(f"{k} {v}" for k, v in split["overlap"].items()) + "."]
    return "\n".join(lines)


def loader_markdown(root: Path) -> str:
    bench = load(root, "loader.json", "benchmarks/results")
    return "\n".join([
        "| source | images/s | workers | images | prepare once (s) |",
        "|---|---|---|---|---|",
        f"| prepared uint8 array | {bench['arrays_images_per_s']} | {bench['workers']} | "
        f"{bench['images']} | {bench['prepare_seconds']} |",
        f"| decoding the JPEG files | {bench['files_images_per_s']} | {bench['workers']} | "
        f"{bench['images']} | |",
        "",
        f"Speed-up from the arrays: {bench['speedup']}x on {bench['machine']['cpus']} cores.",
    ])


CONFIGURATIONS = {"fp32": "fp32", "bf16_channels_last": "bf16 + channels_last",
                  "bf16_channels_last_compile": "bf16 + channels_last + torch.compile"}
INFERENCE_CONFIGURATIONS = {
    "eager_fp32": "PyTorch eager, fp32",
    "eager_bf16_channels_last": "PyTorch eager, bf16 + channels_last",
    "compiled_bf16_channels_last": "torch.compile, bf16 + channels_last",
    "onnxruntime_cuda_fp32": "ONNX Runtime, CUDA provider, fp32 (host input)"}


def train_runs(bench: dict) -> list[dict]:
    """The runs of a train benchmark file: a list with the model in each run, or (older
    files) a dict by configuration with one model for the file."""
    if isinstance(bench["runs"], dict):
        return [{"model": bench["model"], "configuration": name, **run}
                for name, run in bench["runs"].items()]
    return bench["runs"]


def blank(value: object, form: str = "{}") -> str:
    return "" if value is None else form.format(value)


def train_limits_markdown(bench: dict) -> list[str]:
    """What limits a CUDA run: the real loop against the same step without the loader
    (GPU-side augmentation) and without any input work (one batch on the device)."""
    gpu, runs = bench["machine"]["gpu"], train_runs(bench)
    lines = ["", f"What limits the loop on the {gpu} (images/s, batch {bench['batch_size']}; "
             f"`gpu_augment` and `gpu_only` in `train_cuda.json`):", "",
             f"| model | configuration | real loop ({bench['workers']} loader processes) | "
             "augmentation on the GPU, no loader | GPU only, one batch on the device |",
             "|---|---|---|---|---|"]
    for run in runs:
        label = CONFIGURATIONS.get(run["configuration"], run["configuration"])
        lines.append(f"| {run['model']} | {label} | {run['images_per_second']} | "
                     f"{blank(run.get('gpu_augment_images_per_second'))} | "
                     f"{blank(run.get('gpu_only_images_per_second'))} |")
    if bench.get("loader"):
        rates = ", ".join(f"{row['images_per_second']} with {row['workers']}"
                          for row in bench["loader"])
        lines += ["", f"The loader alone (albumentations in worker processes, collation, "
                  f"pinned memory; {bench['machine']['cpus']} cores), images/s by worker "
                  f"processes: {rates}."]
    for run in runs:
        if "gpu_only_by_batch" in run:
            swept = {**run["gpu_only_by_batch"],
                     str(bench["batch_size"]): run["gpu_only_images_per_second"]}
            rates = ", ".join(f"{swept[b]} at {b}" for b in sorted(swept, key=int))
            lines += ["", f"GPU only, {run['model']}, "
                      f"{CONFIGURATIONS[run['configuration']]}, images/s by batch size: "
                      f"{rates}; with `torch.backends.cudnn.benchmark` at batch "
                      f"{bench['batch_size']}: "
                      f"{run['gpu_only_cudnn_benchmark_images_per_second']}."]
    return lines


TRAIN_GOAL = ("efficientnet_b0", 224, 5000)  # issue 18: images/s on one GPU


def train_goal_markdown(bench: dict) -> list[str]:
    """The goal of issue 18 against the best real-loop figure, and which measurement says
    what holds the loop back."""
    model, size, goal = TRAIN_GOAL
    runs = [run for run in train_runs(bench) if run["model"] == model]
    if bench["size"] != size or not runs:
        return []
    best = max(runs, key=lambda run: run["images_per_second"])
    label = CONFIGURATIONS.get(best["configuration"], best["configuration"])
    line = (f"Goal: {goal:,} training images/s for {model} at {size} px. Best real loop on "
            f"the {bench['machine']['gpu']}: {best['images_per_second']} ({label}, "
            f"{best['data_wait_share']:.0%} of the epoch waiting for data); "
            f"{'reached' if best['images_per_second'] >= goal else 'not reached'}.")
    loader = max((row["images_per_second"] for row in bench.get("loader", [])), default=None)
    on_gpu = best.get("gpu_augment_images_per_second")
    if loader is not None and on_gpu is not None:
        line += (f" The same step with augmentation on the GPU runs at {on_gpu} and with the "
                 f"batch already on the device at {best['gpu_only_images_per_second']}, while "
                 f"the loader alone delivers at most {loader} images/s: ")
        line += ("the CPU-side augmentation limits the loop." if loader < on_gpu else
                 "the GPU itself limits the loop.")
    return ["", line]


def train_stage_markdown(stage: dict) -> list[str]:
    """The real train stage on a GPU (benchmarks/gpu/stage_check.py)."""
    live, prediction = stage["dvclive"], stage["predictions"]
    fp32 = prediction[f"{stage['device']}_fp32"]
    bf16 = prediction[f"{stage['device']}_bf16_channels_last"]
    gpu = [key for key in live["metrics"] if key.startswith("gpu/")]
    every = all(live["rows_per_plot"].get(key) == stage["epochs"] for key in gpu)
    same = fp32["labels_identical"] and bf16["labels_identical"]
    return ["", f"The train stage itself on the {stage['gpu']} (`train.device: "
            f"{stage['device']}`, {stage['epochs']} epochs, default sample; "
            f"`cuda_train_stage.json`): exit {stage['train']['returncode']}, dvclive logged "
            f"{', '.join(f'`{key}`' for key in gpu)} "
            f"{'in every epoch' if every else 'in some epochs only'}; the checkpoint loaded on the "
            f"CPU gives the {prediction['n']} test probabilities within "
            f"{fp32['max_abs_probability_difference']:.1e} of the same weights on the GPU in "
            f"fp32 and {bf16['max_abs_probability_difference']:.1e} in bf16, labels "
            f"{'identical' if same else 'DIFFERENT'}."]


def train_inference_markdown(bench: dict) -> list[str]:
    lines = ["", f"Inference on the {bench['machine']['gpu']}, "
             f"`benchmarks/results/inference_cuda.json`, batch {bench['batch_size']} at "
             f"{bench['size']} px, input already on the device:", "",
             "| model | backend | images/s |", "|---|---|---|"]
    for run in bench["runs"]:
        lines.append(f"| {run['model']} | "
                     f"{INFERENCE_CONFIGURATIONS.get(run['configuration'], run['configuration'])}"
                     f" | {run['images_per_second']} |")
    providers = bench["machine"]["onnxruntime_providers"]
    if "CUDAExecutionProvider" not in providers:
        lines += ["", f"ONNX Runtime's CUDA provider: not measured; the onnxruntime "
                  f"{bench['machine']['onnxruntime']} installed there offers "
                  f"{', '.join(providers)}."]
    return lines


def train_markdown(root: Path) -> str:
    lines = ["| device | model | size | batch | loader processes | configuration | images/s | "
             "waiting for data (first batch) | peak GPU memory (GiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    extra = []
    for path in sorted((root / "benchmarks" / "results").glob("train_*.json")):
        bench = load(root, path.name, "benchmarks/results")
        device = bench["machine"]["gpu"] or f"CPU, {bench['machine']['cpus']} cores"
        for run in train_runs(bench):
            wait = run.get("data_wait_share")
            if wait is not None and "first_batch_wait_seconds" in run:
                first = run["first_batch_wait_seconds"] / run["epoch_seconds"]
                wait = f"{wait:.0%} ({first:.0%})"
            elif wait is not None:
                wait = f"{wait:.0%}"
            lines.append(
                f"| {device} | {run['model']} | {bench['size']} | {bench['batch_size']} | "
                f"{bench['workers']} | "
                f"{CONFIGURATIONS.get(run['configuration'], run['configuration'])} | "
                f"{run['images_per_second']} | {blank(wait)} | "
                f"{blank(run.get('gpu/peak_allocated_gb'))} |")
        if bench["machine"]["gpu"]:
            extra += ["", f"`{path.name}`: `{bench['command']}`"]
            extra += train_goal_markdown(bench)
            extra += train_limits_markdown(bench)
    results = root / "benchmarks" / "results"
    if (results / "cuda_train_stage.json").is_file():
        extra += train_stage_markdown(load(root, "cuda_train_stage.json", "benchmarks/results"))
    if (results / "inference_cuda.json").is_file():
        extra += train_inference_markdown(load(root, "inference_cuda.json", "benchmarks/results"))
    return "\n".join(lines + extra)


def dvc_markdown(root: Path) -> str:
    bench = load(root, "dvc.json", "benchmarks/results")
    steps = (("dvc add", "dvc_add_seconds"),
             ("dvc repro dedup (first run)", "repro_dedup_seconds"),
             ("dvc status", "status_seconds"),
             ("dvc repro (nothing to do)", "noop_repro_seconds"),
             ("dvc push (local remote)", "push_seconds"),
             ("dvc pull (fresh clone)", "pull_seconds"))
    lines = [f"{bench['files']:,} files, {bench['cpus']} cores:", "",
             "| command | seconds |", "|---|---|"]
    lines += [f"| `{label}` | {bench[key]} |" for label, key in steps]
    return "\n".join(lines)


def exp_show_markdown(root: Path) -> str:
    shown = load(root, "exp_show.json", "benchmarks/results")
    return "\n".join([
        f"```bash\n{shown['experiment']}\n{shown['command']}\n```", "",
        f"In a fresh clone ({shown['date']}; `benchmarks/exp_show.py`), "
        f"{shown['exp_show_widest_line']} columns:", "", "```",
        "\n".join(line.rstrip() for line in shown["exp_show"].splitlines()), "```"])


def inference_markdown(root: Path) -> str:
    bench = load(root, "inference.json", "benchmarks/results")
    lines = [f"{bench['model']} at {bench['size']} px, {bench['machine']['cpus']} CPU cores, "
             "one run:", "",
             "| backend | images/s (batch 32) | latency p50 (batch 1, ms) | p95 (ms) |",
             "|---|---|---|---|"]
    for name, label in (("pytorch_eager", "PyTorch eager"), ("onnxruntime", "ONNX Runtime")):
        row = bench[name]
        lines.append(f"| {label} | {row['images_per_second_batch32']} | "
                     f"{row['latency_ms_p50_batch1']} | {row['latency_ms_p95_batch1']} |")
    return "\n".join(lines)


def pinned_variant(name: str, unpinned: dict) -> str:
    """'all but MKL_CBWR' -> 'all but MKL's (`MKL_CBWR=` unset)', in words."""
    if not name.startswith("all but "):
        return name
    variable = name.removeprefix("all but ")
    return f"all but `{variable}` (`{variable}={unpinned[variable]}`)"


def cpu_pins_markdown(root: Path) -> str:
    bench = load(root, "cpu_pins.json", "benchmarks/results")
    machine = bench["machine"]
    reference = bench["native"]["all pins"]["md5"][0]
    lines = [f"`{bench['command']}` on an {machine['model']} ({machine['vendor']}; AVX-512 "
             f"{'yes' if machine['avx512f'] else 'no'}; {machine['cores']} cores; PyTorch's "
             f"kernels left alone pick `{machine['natural_aten_capability']}`): the train "
             f"stage, default params, {bench['repeats']} runs of each variant, interleaved.",
             "", "| kernels | train stage, s (mean) | the pin costs, s | weights md5 | "
             "same weights as with all pins |", "|---|---|---|---|---|"]
    for name, row in bench["native"].items():
        cost = row.get("pin_costs_seconds")
        lines.append(f"| {pinned_variant(name, bench['unpinned'])} | {row['mean_seconds']} | "
                     f"{'' if cost is None else f'{cost:+.1f}'} | "
                     f"{', '.join(md5[:8] for md5 in row['md5'])} | "
                     f"{'yes' if row['same_weights_as_all_pins'] else 'no'} |")
    if bench["intel_mkl_branches"]:
        lines += ["", f"MKL's Intel branches on the same hardware ({bench['intel_mkl_note']}):",
                  "", "| MKL branch | weights md5 | same weights as with all pins |",
                  "|---|---|---|"]
        lines += [f"| {name} | {row['md5'][0][:8]} | "
                  f"{'yes' if row['same_weights_as_all_pins'] else 'no'} |"
                  for name, row in bench["intel_mkl_branches"].items()]
    if bench["qemu_probe"]:
        lines += ["", "Three training steps under qemu-x86_64 (emulated CPUs, compared with "
                  "each other only), md5 of the weights after them:", "",
                  "| emulated CPU, kernels | md5 |", "|---|---|"]
        lines += [f"| {name} | {md5[:8]} |" for name, md5 in bench["qemu_probe"].items()]
    lines += ["", f"Weights with all pins: `{reference}`; whole run "
              f"{bench['wall_seconds'] / 60:.0f} minutes."]
    return "\n".join(lines)


NO_SERVE = "No results file yet: run `benchmarks/serve_benchmark.py`."


def serve_cells(bench: dict) -> list[tuple[str, dict]]:
    """(batching on/off, cell) for every cell, by concurrency, batching first."""
    modes = (("on", bench["batching"]), ("off", bench["no_batching"]))
    return sorted(((label, cell) for label, mode in modes for cell in mode["cells"]),
                  key=lambda item: (item[1]["concurrency"], item[0] == "off"))


def serve_goal_lines(bench: dict) -> list[str]:
    goals, offline = bench["goals"], bench["offline"]
    share, memory = goals["batched_share_of_offline"], bench["batching"]["memory"]

    def met(goal: dict) -> str:
        return "met" if goal["met"] else "NOT met"

    return [f"Offline ONNX Runtime in the same run: {offline['throughput']} images/s (batch "
            f"{offline['batch_size']}); served with batching at concurrency "
            f"{max(bench['settings']['concurrency'])}: {share['value']:.0%} of it (goal "
            f"{share['goal']:.0%}: {met(share)}). Errors: {goals['errors']['value']} (goal "
            f"{goals['errors']['goal']}: {met(goals['errors'])}). Resident memory over "
            f"{memory['requests']:,} requests: {memory['growth_mb']:+} MB (goal under "
            f"{goals['memory_growth_mb']['goal']:g}: {met(goals['memory_growth_mb'])})."]


def serve_table(bench: dict) -> list[str]:
    lines = [f"Loopback, {bench['machine']['cpus']} CPU cores shared by client and server, "
             f"{bench['settings']['duration_s']:g} s per row:", "",
             "| concurrency | batching | requests/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {cell['concurrency']} | {label} | {cell['throughput']} | {cell['p50_ms']} | "
              f"{cell['p95_ms']} | {cell['p99_ms']} | {cell['errors']} |"
              for label, cell in serve_cells(bench)]
    return [*lines, "", *serve_goal_lines(bench)]


def serve_table_markdown(root: Path) -> str:
    """The load test in short: requests/s and latency by concurrency and batching."""
    if not (root / "benchmarks/results" / SERVE_FILE).is_file():
        return NO_SERVE
    return "\n".join(serve_table(load(root, SERVE_FILE, "benchmarks/results")))


def serve_cpu_table(bench: dict) -> list[str]:
    lines = ["| concurrency | batching | images per model call | client | server | its event "
             "loop | other | server ms per request |", "|---|---|---|---|---|---|---|---|"]
    for label, cell in serve_cells(bench):
        cores = cell["cores"]
        lines.append(f"| {cell['concurrency']} | {label} | {blank(cell['mean_batch'])} | "
                     f"{cores['client']} | {cores['server']} | {cores['server_event_loop']} | "
                     f"{cores['other']} | {cell['cpu_ms_per_request']['server']} |")
    return lines


def serve_cost_lines(bench: dict) -> list[str]:
    """Where the CPU goes, per request served and per image offline; the memory samples."""
    offline, memory = bench["offline"], bench["batching"]["memory"]
    top = max(bench["batching"]["cells"], key=lambda cell: cell["concurrency"])
    per_request, cost = top["cpu_ms_per_request"], offline["cpu_ms_per_image"]
    loop = per_request["server_event_loop"]
    return [f"CPU milliseconds per request at concurrency {top['concurrency']} with batching: "
            f"server {per_request['server']}, of which its event loop (HTTP, multipart "
            f"parsing, FastAPI, batching, the JSON answer) {loop} and its worker threads "
            f"(decoding, the model) {per_request['server'] - loop:.3f}; client "
            f"{per_request['client']}. Offline, per image: decoding {cost['decode']}, the "
            f"model at batch {offline['batch_size']} {cost['model']} (other processes used "
            f"{offline['cores']['other']} cores meanwhile).", "",
            f"Resident memory of the server: {memory['rss_mb_before']} MB after the rows "
            f"above, then after each tenth of {memory['requests']:,} requests at concurrency "
            f"{memory['concurrency']}: "
            f"{', '.join(str(value) for value in memory['rss_mb_after_each_tenth'])} MB."]


def serve_markdown(root: Path) -> str:
    """The load test in full: the table, the CPU each side used, where it goes, memory."""
    if not (root / "benchmarks/results" / SERVE_FILE).is_file():
        return NO_SERVE
    bench = load(root, SERVE_FILE, "benchmarks/results")
    settings = bench["settings"]
    return "\n".join([
        *serve_table(bench), "", "CPU used during each row, in cores: the client, the server "
        "(and of that its event loop, the main thread), every other process on the machine:",
        "", *serve_cpu_table(bench), "", *serve_cost_lines(bench), "",
        f"Settings: {settings['images']} images from `data/sample`, one per request; warm-up "
        f"{settings['warmup_s']:g} s before each row; `--max-wait-ms "
        f"{settings['max_wait_ms']:g}`; {bench['machine']['cpu_model']}; whole run "
        f"{bench['wall_seconds']:.0f} s. `{bench['command']}`"])


OOD_FILE = "ood_tradeoff.json"
OOD_SETS = {"test": "test split", "external": "external MRI (packaged, other scanners)",
            "everyday": "everyday photographs and graphics",
            "other_modalities": "other modalities (retina, CT, ultrasound, microscopy)"}
OOD_GOALS = {"everyday_flagged": 0.85, "accepted": 0.90}  # issue 17's acceptance goals


def configured_contrast(bench: dict) -> dict:
    """The contrast dial's row at the configured `ood.contrast`: the pipeline's detector."""
    return next(row for row in bench["contrasts"]
                if row["contrast"] == bench["configured_contrast"])


def ood_goal_line(ood: dict) -> str:
    """Whether both goals hold at the chosen threshold, and the best the curve offers."""
    sets, curve = ood["sets"], ood["curve"]
    flagged = 1 - sets["everyday"]["accepted"]
    inside = min(sets["test"]["accepted"], sets["external"]["accepted"])
    both = flagged >= OOD_GOALS["everyday_flagged"] and inside >= OOD_GOALS["accepted"]

    def accepted_inside(point: dict) -> float:
        return min(point["test_accepted"], point["external_accepted"])

    keeping = [1 - p["everyday_accepted"] for p in curve
               if accepted_inside(p) >= OOD_GOALS["accepted"]]
    flagging = [accepted_inside(p) for p in curve
                if 1 - p["everyday_accepted"] >= OOD_GOALS["everyday_flagged"]]
    verdict = "both hold" if both else "not both hold with the sample's narrow training set"
    return (f"Goals: at least {OOD_GOALS['everyday_flagged']:.0%} of the everyday images "
            f"flagged and {OOD_GOALS['accepted']:.0%} of test and external images accepted: "
            f"{verdict}. On the threshold curve, accepting {OOD_GOALS['accepted']:.0%} of "
            f"both flags at most {max(keeping, default=0):.0%} of the everyday images; "
            f"flagging {OOD_GOALS['everyday_flagged']:.0%} accepts at most "
            f"{max(flagging, default=0):.0%} of both.")


def ood_markdown(root: Path) -> str:
    """The pipeline's out-of-distribution detector at its threshold on each packaged set."""
    ood = configured_contrast(load(root, OOD_FILE, "benchmarks/results"))
    lines = ["| images (n) | accepted as MRI or histology (95% CI) |", "|---|---|"]
    for name, label in OOD_SETS.items():
        row = ood["sets"][name]
        lines.append(f"| {label} ({row['n']}) | {row['accepted']:.3f} "
                     f"({row['accepted_low']:.3f} to {row['accepted_high']:.3f}) |")
    auroc = ood["auroc"]
    return "\n".join([*lines, "", f"ROC-AUC, everyday against test: "
                      f"{auroc['everyday_vs_test']:.3f}; against external: "
                      f"{auroc['everyday_vs_external']:.3f}. {ood_goal_line(ood)}"])


def ood_dial_table(bench: dict) -> list[str]:
    """One row per contrast, each detector at its own validation threshold."""
    lines = ["| contrast | threshold | everyday flagged | test accepted | external accepted "
             "| other modalities flagged | ROC-AUC everyday vs external |",
             "|---|---|---|---|---|---|---|"]
    for row in bench["contrasts"]:
        sets = row["sets"]
        chosen = " (configured)" if row["contrast"] == bench["configured_contrast"] else ""
        lines.append(f"| {row['contrast']:g}{chosen} | {row['threshold']:.0f} | "
                     f"{1 - sets['everyday']['accepted']:.3f} | "
                     f"{sets['test']['accepted']:.3f} | {sets['external']['accepted']:.3f} | "
                     f"{1 - sets['other_modalities']['accepted']:.3f} | "
                     f"{row['auroc']['everyday_vs_external']:.3f} |")
    return lines


def ood_curve_markdown(root: Path) -> str:
    """The contrast dial, then every threshold of the configured contrast's curve: what
    each set's acceptance would be there."""
    bench = load(root, OOD_FILE, "benchmarks/results")
    ood = configured_contrast(bench)
    names = list(OOD_SETS)
    curve = ["| threshold | " + " | ".join(f"{OOD_SETS[n]} accepted" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for point in ood["curve"]:
        curve.append(f"| {point['threshold']:.0f} | "
                     + " | ".join(f"{point[f'{n}_accepted']:.3f}" for n in names) + " |")
    return "\n".join([
        f"One detector fitted per `ood.contrast`, each with the threshold that accepts "
        f"{bench['settings']['accept']:.0%} of the validation split (`{bench['command']}`, "
        f"{bench['wall_seconds']:.0f} s on {bench['machine']['cpus']} CPU cores, model "
        f"sha256 `{bench['model_sha256'][:12]}`):", "", *ood_dial_table(bench), "",
        f"Every threshold at the configured contrast {ood['contrast']:g} (chosen: "
        f"{ood['threshold']:.0f}):", "", *curve])


def real_runs(root: Path) -> dict[str, dict]:
    return {path.stem.removeprefix("real_"): load(root, path.name, "benchmarks/results")
            for path in sorted((root / "benchmarks" / "results").glob("real_*.json"))}


def decoded(run: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test labels, predictions and has-a-copy flags from a results file's digit strings."""
    found = run["test_predictions"]
    return tuple(np.array([int(c) for c in found[key]], dtype=np.int64)
                 for key in ("label", "predicted", "has_copy_outside_test"))


def removed(dedup: dict) -> str:
    if "left_in" in dedup:
        left = dedup["left_in"]
        return (f"none (left in: {left['exact']} / {left['pixel']} / {left['near']} / "
                f"{left['conflict']})")
    return " / ".join(str(dedup[k]) for k in ("exact_duplicates", "pixel_duplicates",
                                                "near_duplicates", "conflicts"))


def recipe(run: dict) -> str:
    train, hardware = run["params"]["train"], run["hardware"]
    where = hardware["gpu"] or f"{hardware['cpu_count']} CPU cores"
    return (f"{run['params']['prepare']['image_size']} px, {run['train']['epochs_run']} of "
            f"{train['epochs']} epochs ({train['freeze_epochs']} frozen), {where}")


def real_table(runs: dict[str, dict]) -> list[str]:
    lines = ["| run | recipe | found / kept | removed: exact / pixel / near / conflict | "
             "train / val / test | val accuracy | test accuracy (95% CI) | "
             "test macro F1 (95% CI) | shortcut test accuracy | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        dedup, split, test = run["dedup"], run["split"], run["evaluate"]["test"]
        shortcut = run["evaluate"]["shortcut"]["image_statistics"]["accuracy"]
        lines.append(
            f"| {name} | {recipe(run)} | {dedup['found']} / {dedup['kept']} | {removed(dedup)} | "
            f"{split['train']['n']} / {split['val']['n']} / {split['test']['n']} | "
            f"{fmt(run['evaluate']['val']['accuracy'])} | {interval(test, 'accuracy')} | "
            f"{interval(test, 'f1_macro')} | {fmt(shortcut)} | {run['total_seconds'] / 60:.0f} |")
    return lines


def original_table(run: dict) -> list[str]:
    test, split = run["evaluate"]["test"], run["split"]
    n, errors = ORIGINAL["test_n"], ORIGINAL["test_errors"]
    low, high = wilson_interval(n - errors, n)
    shortcut = run["evaluate"]["shortcut"]
    per_split = " / ".join(
        f"{split[s]['n']} ({', '.join(f'{v} {c}' for c, v in split[s]['per_class'].items())})"
        for s in ("train", "val", "test"))
    return [
        "| | original notebook | this pipeline (`a_original`) |", "|---|---|---|",
        f"| images | {ORIGINAL['images']} | {run['dedup']['found']} "
        f"({', '.join(f'{c}' for c in run['params']['classes'])}) |",
        f"| de-duplication | MD5 only | {run['dedup']['kept']} kept; exact / pixel / near / "
        f"conflict removed: {removed(run['dedup'])} |",
        "| split (train / val / test) | 70 / 15 / 15, random | "
        f"{per_split}; whole patients and similarity groups |",
        f"| test accuracy (95% CI) | {1 - errors / n:.4f} ({low:.4f} to {high:.4f}), "
        f"n {n} | {interval(test, 'accuracy')}, n {test['n']} |",
        f"| test macro F1 (95% CI) | not reported | {interval(test, 'f1_macro')} |",
        "| logistic regression on colour statistics + size / on size alone | not run | "
        f"{fmt(shortcut['image_statistics']['accuracy'])} / "
        f"{fmt(shortcut['size_only']['accuracy'])} |",
    ]


def leakage_lines(task: str, base: dict, leaky: dict, change: str) -> list[str]:
    first, second = decoded(base)[:2], decoded(leaky)[:2]
    lines = [f"**Task {task}** ({change}; `{base['run']}` vs `{leaky['run']}`, same model and "
             "budget):", "",
             "| metric | leakage controlled | leaky | leaky minus controlled (95% CI) |",
             "|---|---|---|---|"]
    worth = []
    for label, metric, key in (("test accuracy", accuracy, "accuracy"),
                               ("test macro F1", macro_f1, "f1_macro")):
        value, (low, high) = difference_interval(first, second, metric, 2000, seed=0)
        lines.append(f"| {label} | {interval(base['evaluate']['test'], key)} | "
                     f"{interval(leaky['evaluate']['test'], key)} | "
                     f"{value:+.4f} ({low:+.4f} to {high:+.4f}) |")
        verdict = ("inflated" if low > 0 else "lowered" if high < 0 else "changed")
        worth.append(f"{verdict} {label} by {100 * value:+.1f} points (95% CI "
                     f"{100 * low:+.1f} to {100 * high:+.1f}"
                     + (": no measurable change)" if low <= 0 <= high else ")"))
    labels, predicted, copied = decoded(leaky)
    lines += ["", f"What leakage was worth on task {task}: it {worth[0]}, and {worth[1]}."]
    if copied.any():
        parts = []
        for name, mask in (("with", copied == 1), ("without", copied == 0)):
            right, n = int((labels[mask] == predicted[mask]).sum()), int(mask.sum())
            low, high = wilson_interval(right, n)
            parts.append(f"{right / max(n, 1):.4f} ({low:.4f} to {high:.4f}) on the {n} test "
                         f"images {name} a copy on the training side")
        lines.append(f"In the leaky run, accuracy was {parts[0]}, and {parts[1]}.")
    if "patients" in leaky and "patients" in base:
        shared = [f"{run['patients']['test_also_in_train_or_val']} of its "
                  f"{run['patients']['test']} test patients" for run in (leaky, base)]
        lines.append(f"The leaky split had {shared[0]} with images in train or val too; the "
                     f"controlled split {shared[1]}.")
    leaks = leaky["split"].get("leaks")
    if leaks is not None:
        lines.append(f"The leaky split had {leaks['pairs']} cross-split leaks (file, pixel or "
                     f"near copies); {leaks['test_images_with_copy']} of "
                     f"{leaky['split']['test']['n']} test images had a copy in train or val.")
    return lines


NO_REAL_RUNS = "No results files yet: run `benchmarks/real/run.py`."


def real_table_markdown(root: Path) -> str:
    """The real-data runs in short, for the README (the full table is in docs/)."""
    runs = real_runs(root)
    if not runs:
        return NO_REAL_RUNS
    lines = ["| run | train / val / test | test accuracy (95% CI) | shortcut test accuracy |",
             "|---|---|---|---|"]
    for name, run in runs.items():
        split, test = run["split"], run["evaluate"]["test"]
        shortcut = run["evaluate"]["shortcut"]["image_statistics"]["accuracy"]
        lines.append(f"| {name} | {split['train']['n']} / {split['val']['n']} / "
                     f"{split['test']['n']} | {interval(test, 'accuracy')} | {fmt(shortcut)} |")
    return "\n".join(lines)


def real_markdown(root: Path) -> str:
    """The whole real-data study: the summary table, task A beside the original study, and
    what leakage was worth on each task."""
    runs = real_runs(root)
    if not runs:
        return NO_REAL_RUNS
    lines = real_table(runs)
    if "a_original" in runs:
        lines += ["", "**Task A**, the original study beside ours:", ""]
        lines += original_table(runs["a_original"])
    for task, (base, leaky, change) in COMPARISONS.items():
        if base in runs and leaky in runs:
            lines += ["", *leakage_lines(task, runs[base], runs[leaky], change)]
    return "\n".join(lines)


NO_EXPERIMENTS = ("No results file yet: run `benchmarks/real/experiments.py` "
                  "(docs/real-data.md).")


def spread(summary: dict) -> str:
    """A metric over runs: mean, sd and the interval for training plus test error."""
    sd = "n/a" if summary["sd"] is None else f"{summary['sd']:.3f}"
    span = ("n/a" if summary["low"] is None
            else f"{summary['low']:.3f} to {summary['high']:.3f}")
    return f"{summary['mean']:.3f} (sd {sd}; {span})"


def combined(row: dict) -> str:
    """An ensemble's accuracy with its interval, and its paired gain over the best member."""
    gain = row["minus_best_member"]["acc"]
    return (f"{row['acc']:.3f} ({row['acc_lo']:.3f} to {row['acc_hi']:.3f}); "
            f"{gain['value']:+.3f} ({gain['low']:+.3f} to {gain['high']:+.3f})")


def experiment_rows(bench: dict, flips: bool) -> list[tuple[str, str, str]]:
    """(what, on all test images, on the de-duplicated ones) for each result; with `flips`
    also the ensembles averaged over each image's flips."""
    seeds, folds = bench["seeds"], bench["folds"]
    rows = [(f"`{bench['chosen_recipe']['name']}`, {seeds['all']['acc']['n']} seeds",
             spread(seeds["all"]["acc"]), spread(seeds["unique"]["acc"])),
            (f"{folds['all']['acc']['n']} folds", spread(folds["all"]["acc"]),
             spread(folds["unique"]["acc"]))]
    for key, label in (("fold_ensemble", "fold ensemble"),
                       ("architecture_ensemble", "architecture ensemble")):
        result = bench[key]
        for variant in ("ensemble", "ensemble_tta") if flips else ("ensemble",):
            extra = " + flips" if variant.endswith("tta") else ""
            rows.append((f"{label} ({len(result['members'])}){extra}", combined(result[variant]),
                         combined(result["without_test_copies"][variant])))
    return rows


def experiments_table(bench: dict, flips: bool) -> list[str]:
    images = bench["test_images"]
    return [f"| task B accuracy | {images['all']} `Testing` images | {images['unique']} "
            "without their copies |", "|---|---|---|",
            *(f"| {what} | {everything} | {unique} |"
              for what, everything, unique in experiment_rows(bench, flips))]


def goal_line(bench: dict) -> str:
    goal = bench["goal"]
    ensembles = {f"{key.replace('_', ' ')}{' + flips' if variant.endswith('tta') else ''}":
                 bench[key][variant] for key in ("fold_ensemble", "architecture_ensemble")
                 for variant in ("ensemble", "ensemble_tta")}
    name, best = max(ensembles.items(), key=lambda item: item[1]["acc"])
    met = best["acc"] >= goal["accuracy"] and best["acc_lo"] > goal["beat"]
    return (f"Goal: an ensemble at {goal['accuracy']}+ on all {bench['test_images']['all']}, "
            f"its lower bound above {goal['beat']} ({goal['source']}): "
            f"{'reached' if met else 'not reached'}; best: {name}, {best['acc']:.3f} "
            f"({best['acc_lo']:.3f} to {best['acc_hi']:.3f}).")


def experiments_markdown(root: Path) -> str:
    """Task B's repeated runs and ensembles, accuracy only, for the README."""
    path = root / "benchmarks/results" / EXPERIMENTS_FILE
    if not path.exists():
        return NO_EXPERIMENTS
    bench = load(root, EXPERIMENTS_FILE, "benchmarks/results")
    return "\n".join([*experiments_table(bench, flips=False), "", goal_line(bench)])


def experiments_detail_markdown(root: Path) -> str:
    """Every run of task B's experiments: settings, validation score, test scores and
    wall time, then the aggregated table."""
    path = root / "benchmarks/results" / EXPERIMENTS_FILE
    if not path.exists():
        return NO_EXPERIMENTS
    bench = load(root, EXPERIMENTS_FILE, "benchmarks/results")
    images = bench["test_images"]
    lines = [f"| experiment | `-S` settings | validation | epochs | test accuracy, "
             f"{images['all']} images | test macro F1 | test accuracy, {images['unique']} "
             "images | minutes (training) |", "|---|---|---|---|---|---|---|---|"]
    for run in bench["runs"]:
        settings = ", ".join(f"{k}={v}" for k, v in run["settings"].items()) or "(baseline)"
        (monitor, value), = run["validation"].items()
        test, unique = run["test"]["all"], run["test"]["unique"]
        minutes = "n/a" if run["wall_seconds"] is None else f"{run['wall_seconds'] / 60:.1f}"
        lines.append(
            f"| {run['name']} | {settings} | {monitor} {value:.4f} | {run['epochs_run']} | "
            f"{test['acc']:.4f} ({test['acc_lo']:.4f} to {test['acc_hi']:.4f}) | "
            f"{test['f1']:.4f} | {unique['acc']:.4f} | {minutes} "
            f"({run['training_seconds'] / 60:.1f}) |")
    lines += ["", f"All runs: {bench['wall_seconds_total'] / 60:.0f} minutes on "
              f"{bench['hardware']['cpu_count']} CPU cores. Repeated runs: mean (sd; 95% "
              "interval for training and test error). Ensembles: accuracy (95% CI); minus the "
              "best member (paired 95% CI).", "", *experiments_table(bench, flips=True), "",
              goal_line(bench)]
    return "\n".join(lines)


FILES: dict[str, list[Section]] = {
    "README.md": [(BEGIN, END, results_markdown),
                  (SERVE_TABLE_BEGIN, SERVE_TABLE_END, serve_table_markdown),
                  (OOD_BEGIN, OOD_END, ood_markdown),
                  (REAL_TABLE_BEGIN, REAL_TABLE_END, real_table_markdown),
                  (EXPERIMENTS_BEGIN, EXPERIMENTS_END, experiments_markdown)],
    "docs/serving.md": [(OOD_CURVE_BEGIN, OOD_CURVE_END, ood_curve_markdown)],
    "docs/dvc.md": [(EXP_SHOW_BEGIN, EXP_SHOW_END, exp_show_markdown)],
    "docs/pipeline.md": [(CPU_PINS_BEGIN, CPU_PINS_END, cpu_pins_markdown)],
    "docs/real-data.md": [(REAL_BEGIN, REAL_END, real_markdown),
                          (EXPERIMENTS_DETAIL_BEGIN, EXPERIMENTS_DETAIL_END,
                           experiments_detail_markdown)],
    "benchmarks/README.md": [(DEDUP_BEGIN, DEDUP_END, dedup_markdown),
                             (LOADER_BEGIN, LOADER_END, loader_markdown),
                             (TRAIN_BEGIN, TRAIN_END, train_markdown),
                             (DVC_BEGIN, DVC_END, dvc_markdown),
                             (INFERENCE_BEGIN, INFERENCE_END, inference_markdown),
                             (SERVE_BEGIN, SERVE_END, serve_markdown)],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    return update_files(args.root, FILES, args.check, "python scripts/results_table.py")


if __name__ == "__main__":
    sys.exit(main())
