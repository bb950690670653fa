"""The peer servers' own Python environment, /.venv-peers, made on demand.

    python benchmarks/serve_peers/environment.py   # run with the project's .venv python

BentoML and Ray Serve bring their own versions of uvicorn's extras (uvloop, httptools),
grpc, opentelemetry and more: installing them into the project's .venv would change what
`medimg serve` runs on and so what the benchmark measures. They go into a venv of their
own instead, which sees the project's packages (medimg editable, numpy, onnxruntime,
torch...) through a .pth file, after its own, so the peers serve the same model with the
same code. The venv is made again when requirements.txt changes (a stamp file keeps the
sha256 of the requirements it was made from). Prints the peers' python.
"""

import hashlib
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REQUIREMENTS = HERE / "requirements.txt"
PEERS_VENV = REPO / ".venv-peers"
STAMP = PEERS_VENV / "requirements.sha256"
PTH_NAME = "medimg_project_venv.pth"


def requirements_hash() -> str:
    """What the stamp holds: a changed requirements.txt means a new venv."""
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def site_packages(python: Path) -> Path:
    """The purelib folder of `python`'s environment, asked of that interpreter."""
    out = subprocess.run([str(python), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout
    return Path(out.strip())


def create() -> None:
    """A fresh venv on the running interpreter, the project's packages behind its own via
    a .pth file, then the peers' requirements installed into it alone."""
    if Path(sys.prefix).resolve() == PEERS_VENV.resolve():
        raise SystemExit("run environment.py with the project's python (.venv), "
                         "not with the peers' own")
    project_site = Path(sysconfig.get_paths()["purelib"])
    if PEERS_VENV.exists():
        shutil.rmtree(PEERS_VENV)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    python = venv_python(PEERS_VENV)
    # addsitedir appends: the peers' own packages win, the project's fill in the rest
    # (and its own .pth files, e.g. medimg's editable install, are processed too).
    (site_packages(python) / PTH_NAME).write_text(
        f"import site; site.addsitedir({str(project_site)!r})\n")
    # venv's own old setuptools would hide the project's (torch asks for a newer one).
    subprocess.run([str(python), "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"],
                   check=True)
    # pip sees the project's packages as installed and leaves them be; a package it must
    # replace is installed here and not uninstalled there ("outside environment").
    subprocess.run([str(python), "-m", "pip", "install", "-r", str(REQUIREMENTS)],
                   check=True, cwd=REPO)
    STAMP.write_text(requirements_hash() + "\n")


def peer_python() -> Path:
    """The python of /.venv-peers, made (or made again) first when missing or when
    requirements.txt changed since it was made."""
    python = venv_python(PEERS_VENV)
    current = STAMP.is_file() and STAMP.read_text().strip() == requirements_hash()
    if not (current and python.exists()):
        create()
    return python


if __name__ == "__main__":
    print(peer_python())
