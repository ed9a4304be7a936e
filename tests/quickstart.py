"""Set up a venv for the project and run the toy demo or the tests, on a fresh machine; standard library
only, any Python 3.10+:

    python3 tests/quickstart.py demo     # the toy demo: writes autolora-demo.png (about 20 s)
    python3 tests/quickstart.py test     # lint, type check, the GPU check's CPU rows, tiers 1 and 2: what CI runs

The venv (`--venv` or AUTOLORA_VENV, default .venv) gets torch first, from PyTorch's CPU wheels
(about 200 MB) unless `--torch-index none` (or AUTOLORA_TORCH_INDEX=none) takes it from your package
index (on Linux PyPI serves a CUDA build of several GB, which runs the tests as well), then
requirements-test.txt. A venv that has torch already is used as it is. `.ci/run` calls `test` on a
fresh venv."""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_pin():
    """requirements-test.txt's torch line, so both ways install the same release."""
    lines = (ROOT / "requirements-test.txt").read_text().splitlines()
    return next(line.strip() for line in lines if line.strip().startswith("torch=="))


def run(*command):
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def set_up(venv, torch_index):
    python = venv / "bin" / "python"
    if not python.exists():
        run(sys.executable, "-m", "venv", venv)
    has_torch = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        index = [] if torch_index == "none" else ["--index-url", torch_index]
        run(python, "-m", "pip", "install", "-q", torch_pin(), *index)
    run(python, "-m", "pip", "install", "-q", "-r", "requirements-test.txt")
    return python


def demo(python):
    run(python, "-m", "lib_autolora.tools.demo", "--out", "autolora-demo.png")


def test(python):
    run(python.parent / "ruff", "check", ".")
    run(python, "-m", "mypy")  # mypy.ini: the lib_autolora package
    out = tempfile.mkdtemp(prefix="autolora-gpu-check-")
    run(python, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", out)  # runs end to end
    run(python, "-m", "pytest", "tests", "-q")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("demo", "test"))
    parser.add_argument("--venv", type=Path, default=os.environ.get("AUTOLORA_VENV", ROOT / ".venv"))
    parser.add_argument("--torch-index", default=os.environ.get("AUTOLORA_TORCH_INDEX", CPU_INDEX),
                        help=f"where torch comes from (default {CPU_INDEX}); none: the package index pip uses")
    args = parser.parse_args(argv)
    python = set_up(args.venv.resolve(), args.torch_index)
    {"demo": demo, "test": test}[args.what](python)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as error:
        sys.exit(error.returncode)
