"""Tier 2: install.py as the WebUI's launcher runs it (a subprocess with the WebUI's folder first on
PYTHONPATH), on WebUI folders made of the files each family's adapter needs."""
import os
import pathlib
import subprocess
import sys

import pytest

from lib_autolora.hosts import a1111, forge, reforge

INSTALL = pathlib.Path(__file__).resolve().parents[2] / "install.py"


def make_webui(root, requires, leave_out=None):
    """A WebUI folder whose files hold the texts in `requires`, all but the one at index `leave_out`."""
    (root / "modules").mkdir(parents=True, exist_ok=True)
    (root / "modules" / "scripts.py").touch()
    for index, (path, text, _) in enumerate(requires):
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        with file.open("a", encoding="utf-8") as handle:
            handle.write("" if index == leave_out else text + "\n")
    return root


def run_installer(root):
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, str(INSTALL)], env=env, cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def forge_tree(root, leave_out=None):
    make_webui(root, forge.REQUIRES, leave_out)
    (root / "backend" / "patcher").mkdir(parents=True, exist_ok=True)
    (root / "backend" / "patcher" / "__init__.py").touch()  # Forge's marker module
    return root


def test_a_complete_a1111_is_accepted_silently(tmp_path):
    assert run_installer(make_webui(tmp_path, a1111.REQUIRES)) == ""


def test_a_complete_forge_is_accepted_silently(tmp_path):
    assert run_installer(forge_tree(tmp_path)) == ""


@pytest.mark.parametrize("index", range(len(a1111.REQUIRES)))
def test_an_a1111_without_a_feature_gets_one_line_naming_it(tmp_path, index):
    path, _, provider = a1111.REQUIRES[index]
    output = run_installer(make_webui(tmp_path, a1111.REQUIRES, leave_out=index))
    assert output.count("\n") == 0
    assert output.startswith("AutoLoRA: this WebUI (a1111 family) lacks") and provider in output and path in output


def test_a_forge_without_online_lora_is_named(tmp_path):
    index = next(i for i, (path, _, _) in enumerate(forge.REQUIRES) if path == "backend/patcher/lora.py")
    output = run_installer(forge_tree(tmp_path, leave_out=index))
    assert "(forge family)" in output and "online LoRA" in output


def test_a_complete_reforge_family_webui_is_accepted_silently(tmp_path):
    """Its files make the family's marker module (ldm_patched/modules/model_patcher.py) importable."""
    assert run_installer(make_webui(tmp_path, reforge.REQUIRES)) == ""


@pytest.mark.parametrize("index", range(len(reforge.REQUIRES)))
def test_a_reforge_family_webui_without_a_feature_gets_one_line_naming_it(tmp_path, index):
    path, _, provider = reforge.REQUIRES[index]
    output = run_installer(make_webui(tmp_path, reforge.REQUIRES, leave_out=index))
    assert output.startswith("AutoLoRA: this WebUI (reforge family) lacks")
    assert provider in output and path in output


def test_no_webui_folder_is_said(tmp_path):
    assert "cannot find the WebUI's folder" in run_installer(tmp_path)
