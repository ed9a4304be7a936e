"""Tier 2: the live-test host command (tests/support/webui_host.py) without network or WebUI: its
host table, the requirements filter, where it finds helper repositories, the sparse checkout of
snapshots that lack objects, and its command line."""
import json
import re
import subprocess

import pytest

from tests.support import webui_host
from tests.support.fixtures import names
from tests.support.webui_host import HOSTS, PROJECT

KEYS = {"commit", "python", "torch", "requirements", "replace", "repositories", "sources", "pip_first", "pip",
        "fixtures", "env", "flags", "ports"}
# flags a host's argparse rejects, which would stop it at start (tests/README.md, "Setting up a host")
REJECTED = {"classic": {"--do-not-download-clip"},
            "forge2": {"--no-download-sd-model", "--do-not-download-clip", "--ckpt-dir", "--lora-dir"}}
HEX40 = re.compile(r"[0-9a-f]{40}")


@pytest.mark.parametrize("kind", HOSTS)
def test_every_host_entry_is_complete_and_well_formed(kind, tmp_path):
    spec = HOSTS[kind]
    assert set(spec) == KEYS
    assert HEX40.fullmatch(spec["commit"]) and re.fullmatch(r"3\.\d+", spec["python"])
    assert [re.match(r"[a-z]+", pin).group() for pin in spec["torch"]] == ["torch", "torchvision"]
    assert all("==" in pin for pin in spec["torch"])
    for table in ("repositories", "sources"):
        for github, commit in spec[table].values():
            assert re.fullmatch(r"[\w.-]+/[\w.-]+", github) and HEX40.fullmatch(commit)
    assert spec["fixtures"] in ("a1111", "forge") and set(spec["ports"]) == set(webui_host.INSTANCES)
    host = webui_host.Host(tmp_path, kind)
    flags = [host.fill(flag) for flag in webui_host.FLAGS + spec["flags"] + webui_host.PLAIN_FLAGS]
    assert f"{tmp_path}/fixtures/Stable-diffusion" in flags and f"{tmp_path}/fixtures/Lora" in flags
    assert not REJECTED.get(kind, set()) & set(flags)
    for extra in spec["pip_first"] + spec["pip"]:
        [host.fill(arg) for arg in extra]  # every placeholder is known


def test_ports_differ_across_hosts_and_instances():
    ports = [port for spec in HOSTS.values() for port in spec["ports"].values()]
    assert len(ports) == len(set(ports)) == 2 * len(HOSTS)
    assert {kind: (spec["ports"]["ext"], spec["ports"]["plain"]) for kind, spec in HOSTS.items()} == {
        "a1111": (7860, 7862), "forge": (7861, 7863), "reforge": (7864, 7865), "classic": (7866, 7867),
        "forge2": (7868, 7869)}


def test_without_torch_drops_torch_and_torchvision_lines_only(tmp_path):
    kept = ["GitPython==3.1.32", "torchsde==0.2.6", "torchdiffeq==0.2.3", "open-clip-torch==2.20.0",
            "pytorch_lightning==1.9.4", "torchmetrics", "# torch is pinned per host", ""]
    dropped = ["torch==2.1.2", "torch>=2.0", "torch", "  torch  ", "torchvision==0.16.2", "torchvision",
               "Torch==1.0", "torch ; sys_platform != 'darwin'", "torch[opt]==2.0", "torch~=2.3", "torch<3",
               "torch @ https://example.invalid/torch.whl"]
    source = tmp_path / "requirements.txt"
    source.write_text("\n".join(dropped[:4] + kept[:4] + dropped[4:] + kept[4:]) + "\n")
    out = webui_host.without_torch(source, tmp_path / "out.txt")
    assert out.read_text().splitlines() == kept


def test_without_torch_replaces_reforges_wheel_url_by_the_pypi_pin(tmp_path):
    url = "https://github.com/Panchovix/pydantic-fixreforge/releases/download/main_v1/pydantic-1.10.15-py3-none-any.whl"
    source = tmp_path / "requirements_versions.txt"
    source.write_text(f"torch\ntorchsde==0.2.6\n{url}\npydantic-settings==2.0\n")
    out = webui_host.without_torch(source, tmp_path / "out.txt", HOSTS["reforge"]["replace"])
    assert out.read_text().splitlines() == ["torchsde==0.2.6", "pydantic==1.10.15", "pydantic-settings==2.0"]
    plain = webui_host.without_torch(source, tmp_path / "plain.txt", HOSTS["classic"]["replace"])
    assert url in plain.read_text().splitlines()


def test_find_source_prefers_repo_then_each_repos_folder_in_its_layouts(tmp_path):
    fetch, other = tmp_path / "fetch", tmp_path / "other"
    for path in (fetch / "openai+CLIP" / "repo", fetch / "BLIP", other / "CLIP.git", other / "k-diffusion",
                 other / "crowsonkb+k-diffusion"):
        path.mkdir(parents=True)
    find = webui_host.find_source
    assert find("CLIP", "openai/CLIP", {}, [other, fetch]) == other / "CLIP.git"
    assert find("CLIP", "openai/CLIP", {}, [fetch, other]) == fetch / "openai+CLIP" / "repo"
    assert find("BLIP", "salesforce/BLIP", {}, [fetch]) == fetch / "BLIP"
    assert find("k-diffusion", "crowsonkb/k-diffusion", {}, [other]) == other / "crowsonkb+k-diffusion"
    named = {"openai/CLIP": str(tmp_path / "mine")}
    assert find("CLIP", "openai/CLIP", named, [fetch]) == tmp_path / "mine"
    assert find("CLIP", "openai/CLIP", {"CLIP": "/x", **named}, [fetch]).as_posix() == "/x"
    with pytest.raises(SystemExit, match="no local copy of salesforce/BLIP"):
        find("BLIP", "salesforce/BLIP", {}, [other])


def git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_check_out_leaves_out_files_whose_objects_the_source_lacks(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    git("init", "-q", cwd=source)
    (source / "kept.txt").write_text("kept\n")
    (source / "assets").mkdir()
    (source / "assets" / "big [1].png").write_bytes(b"\x89PNG only in the full repository")
    git("add", ".", cwd=source)
    git("commit", "-q", "-m", "one", cwd=source)
    commit = git("rev-parse", "HEAD", cwd=source)
    blob = git("rev-parse", "HEAD:assets/big [1].png", cwd=source)
    (source / ".git" / "objects" / blob[:2] / blob[2:]).unlink()  # what a snapshot without large files looks like
    target = tmp_path / "webui"
    webui_host.check_out(source, target, commit)
    assert (target / "kept.txt").read_text() == "kept\n" and not (target / "assets" / "big [1].png").exists()
    assert git("status", "--porcelain", cwd=target) == ""
    assert git("rev-parse", "HEAD", cwd=target) == commit


def test_install_refuses_a_dest_inside_the_project(tmp_path):
    for dest in (PROJECT, PROJECT / "hosts" / "a1111"):
        with pytest.raises(SystemExit, match="outside this project"):
            webui_host.main(["install", "--host", "reforge", "--source", str(tmp_path), "--dest", str(dest)])
    assert not (PROJECT / "hosts").exists() and not (PROJECT / "host.json").exists()


def test_ports_option_and_what_start_records(tmp_path):
    args = webui_host.parse(["start", "--dest", str(tmp_path), "--ports", "7880,7882"])
    assert args.ports == {"ext": 7880, "plain": 7882} and args.only is None
    assert webui_host.parse(["status", "--dest", str(tmp_path)]).ports is None
    for bad in ("7880", "7880,7880", "a,b", "0,7882", "7880,70000", "7880,7882,7884", ""):
        with pytest.raises(SystemExit):
            webui_host.parse(["start", "--dest", str(tmp_path), "--ports", bad])
    with pytest.raises(SystemExit):
        webui_host.parse(["stop", "--dest", str(tmp_path), "--ports", "7880,7882"])  # stop uses the pid files
    (tmp_path / "host.json").write_text(json.dumps({"host": "reforge"}))
    assert webui_host.Host(tmp_path).url("plain") == "http://127.0.0.1:7865"
    webui_host.Host(tmp_path, ports=args.ports).record_ports(["ext", "plain"], args.ports)
    assert webui_host.Host(tmp_path).ports == args.ports
    assert webui_host.Host(tmp_path, ports={"ext": 1, "plain": 2}).url("ext") == "http://127.0.0.1:1"
    webui_host.Host(tmp_path).record_ports(["ext"])  # stop --only ext
    assert webui_host.Host(tmp_path).ports == {"ext": 7864, "plain": 7882}


def test_family_option_defaults_to_sd1_and_knows_the_fixture_makers_families(tmp_path):
    install = ["install", "--host", "forge2", "--source", "s", "--dest", str(tmp_path)]
    assert webui_host.parse(install).family == "sd1"
    assert webui_host.parse(install + ["--family", "sdxl, sd1,sdxl"]).family == "sdxl,sd1"
    assert webui_host.parse(install + ["--family", ",".join(names.FAMILIES)]).family == ",".join(names.FAMILIES)
    for bad in ("sd4", "", "sd1,sd2"):
        with pytest.raises(SystemExit):
            webui_host.parse(install + ["--family", bad])


def test_find_python_takes_pyenvs_newest_patch_release(tmp_path, monkeypatch):
    for version in ("3.10.2", "3.10.13", "3.11.7", "3.10.9"):
        (tmp_path / "versions" / version / "bin").mkdir(parents=True)
        (tmp_path / "versions" / version / "bin" / "python").touch()
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    assert webui_host.find_python("3.10", None) == tmp_path / "versions" / "3.10.13" / "bin" / "python"
    assert webui_host.find_python("3.11", "/usr/bin/python3.11") == "/usr/bin/python3.11"
