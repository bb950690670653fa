"""The data stages decide the same on every x86_64 CPU: the dedup and split stages, run on
the sample under each BLAS kernel that NumPy's OpenBLAS offers on this machine and with
NumPy's own dispatch capped at its baseline, write byte-identical outputs.

On this project's first Intel machine the SkylakeX kernel removed a neighbouring MRI
slice that the Haswell kernel kept (issue 40): pHash bits of a symmetric slice came from
the rounding noise of the DCT's sums."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HAS_AVX2, REPO

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAS_AVX2, reason="OpenBLAS's x86_64 kernels need AVX2")]

# Kernels of NumPy's bundled OpenBLAS (DYNAMIC_ARCH): AVX2 (Haswell, Zen), AVX-512
# (SkylakeX, SapphireRapids) and SSE3 (Prescott).
CORE_TYPES = ("Haswell", "SkylakeX", "SapphireRapids", "Zen", "Prescott")
OUTPUTS = ("data/dedup", "data/split", "metrics/report/dedup.json",
           "metrics/report/split.json", "metrics/dedup.json", "metrics/split.json",
           "plots/dedup", "plots/split")


def python(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, check=False)
    assert result.returncode == 0, f"{args} under {env}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def kernel_in_use(env: dict[str, str]) -> str:
    """The kernel NumPy's OpenBLAS runs under `env` (it falls back when the CPU lacks one)."""
    return python(["-c", "import numpy, threadpoolctl\n"
                   "print(next(i['architecture'] for i in threadpoolctl.threadpool_info()"
                   " if i['internal_api'] == 'openblas' and 'numpy' in i['filepath']))"],
                  REPO, env).strip()


def numpy_cap() -> str:
    """Every NumPy dispatch target this CPU has above NumPy's baseline."""
    return python(["-c", "from numpy._core._multiarray_umath import __cpu_baseline__ as b,"
                   " __cpu_features__ as f\n"
                   "print(','.join(n for n, on in f.items() if on and n not in b))"],
                  REPO, {}).strip()


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sample")
    shutil.copy(REPO / "params.yaml", work)
    python([str(REPO / "stages/sample.py")], work, {})
    return work / "data/sample"


def data_stages(sample: Path, folder: Path, env: dict[str, str]) -> dict[str, str]:
    """MD5 of every file the dedup and split stages write, run under `env`."""
    (folder / "data").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", folder)
    (folder / "data/sample").symlink_to(sample)
    for stage in ("dedup", "split"):
        python([str(REPO / f"stages/{stage}.py")], folder, env)
    return digests_of(folder)


def digests_of(folder: Path) -> dict[str, str]:
    digests = {}
    for name in OUTPUTS:
        root = folder / name
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file():
                digests[str(path.relative_to(folder))] = hashlib.md5(path.read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def reference_run(sample: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reference")
    data_stages(sample, folder, {})
    return folder


@pytest.fixture(scope="module")
def reference(reference_run: Path) -> dict[str, str]:
    return digests_of(reference_run)


@pytest.mark.parametrize("core_type", CORE_TYPES)
def test_dedup_and_split_write_the_same_bytes_under_every_blas_kernel(
        sample: Path, reference: dict[str, str], tmp_path: Path, core_type: str) -> None:
    env = {"OPENBLAS_CORETYPE": core_type}
    used, default = kernel_in_use(env), kernel_in_use({})
    if used == default and core_type.lower() != default.lower():
        pytest.skip(f"this OpenBLAS does not run {core_type} here: it runs {default}")
    # Some requests run a kernel of another name (Zen's is Haswell's): still a run to check.
    assert data_stages(sample, tmp_path, env) == reference, f"{core_type} ran {used}"



def test_dedup_and_split_write_the_same_bytes_with_numpy_dispatch_capped(
        sample: Path, reference: dict[str, str], tmp_path: Path) -> None:
    cap = numpy_cap()
    if not cap:
        pytest.skip("this CPU has no NumPy dispatch target above NumPy's baseline")
    assert data_stages(sample, tmp_path, {"NPY_DISABLE_CPU_FEATURES": cap}) == reference


def test_the_sample_keeps_every_neighbouring_slice(reference_run: Path) -> None:
    # The sample has no copies: each removal would be a neighbouring slice taken for one.
    counts = json.loads((reference_run / "metrics/report/dedup.json").read_text())
    assert counts["kept"] == counts["found"] and counts["near_duplicates"] == 0
