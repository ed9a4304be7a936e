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


def test_every_extension_entry_is_well_formed():
    allowed = {"commit", "requirements", "prepare", "builtin", "flags", "env"}
    for github, spec in webui_host.EXTENSIONS.items():
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", github) and set(spec) <= allowed and HEX40.fullmatch(spec["commit"])
        assert all(callable(step) for step in spec.get("prepare", []) + [spec.get("requirements", len)])
        host = webui_host.Host("/x", "a1111")
        [host.fill(flag) for flag in spec.get("flags", [])] + [host.fill(v) for v in spec.get("env", {}).values()]


def test_extension_option_names_source_and_commit():
    spec = webui_host.extension_spec
    assert spec("adetailer") == {"repo": "Bing-su/adetailer", "source": None, "commit": None}
    assert spec("Bing-su/ADetailer@abc123") == {"repo": "Bing-su/adetailer", "source": None, "commit": "abc123"}
    assert spec("sd-webui-controlnet=/m/cn/repo@v1.1") == {"repo": "Mikubill/sd-webui-controlnet",
                                                          "source": "/m/cn/repo", "commit": "v1.1"}
    assert spec("me/mine=/src/mine") == {"repo": "me/mine", "source": "/src/mine", "commit": None}
    assert spec("mine=/src/a@b/c") == {"repo": "mine", "source": "/src/a@b/c", "commit": None}  # '@' in a path
    with pytest.raises(Exception, match="owner/name"):
        spec("mine")
    args = webui_host.parse(["extensions", "--dest", "d", "--extension", "adetailer", "--extension", "a/b"])
    assert [e["repo"] for e in args.extension] == ["Bing-su/adetailer", "a/b"]
    with pytest.raises(SystemExit):
        webui_host.parse(["extensions", "--dest", "d"])  # at least one
    assert webui_host.parse(["install", "--host", "a1111", "--source", "s", "--dest", "d"]).extension == []


def test_requirements_read_from_the_extensions_own_files(tmp_path):
    (tmp_path / "install.py").write_text('deps = [\n    ("ultralytics", "8.3.75", None),\n'
                                         '    ("mediapipe", "0.10.13", "0.10.15"),\n    ("rich", None, "14"),\n]\n')
    assert webui_host.adetailer_requirements(tmp_path) == ["ultralytics>=8.3.75", "mediapipe>=0.10.13,<=0.10.15",
                                                           "rich<=14"]
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = [\n    "send2trash~=1.8",\n'
                                             '    "dynamicprompts[attentiongrabber,magicprompt]~=0.31.0",\n]\n'
                                             '\n[tool.ruff]\nselect = ["B"]\n')
    assert webui_host.pyproject_requirements(tmp_path) == ["send2trash~=1.8",
                                                           "dynamicprompts[attentiongrabber,magicprompt]~=0.31.0"]
    (tmp_path / "requirements.txt").write_text("fvcore\nmediapipe\n# preprocessors\ntimm<=0.9.5\n\ntorch\n")
    assert webui_host.controlnet_requirements(tmp_path) == ["fvcore", "mediapipe>=0.10.13,<=0.10.15", "timm<=0.9.5",
                                                            "torch", "onnxruntime"]
    assert webui_host.requirements_txt(tmp_path) == ["fvcore", "mediapipe", "timm<=0.9.5"]  # an unknown one: no torch
    assert webui_host.requirements_txt(tmp_path / "none") == []


def test_option_defaults_takes_the_literal_defaults_an_extension_registers(tmp_path):
    settings = tmp_path / "settings.py"
    settings.write_text('def on_ui_settings():\n'
                        '    shared.opts.add_option(key="dp_a", info=shared.OptionInfo(False, label="a"))\n'
                        '    shared.opts.add_option("dp_b", shared.OptionInfo("{", "b", section=("s", "S")))\n'
                        '    shared.opts.add_option(key="dp_c", info=shared.OptionInfo(models()[0], label="c"))\n'
                        '    shared.opts.add_option(key="dp_d", info=shared.OptionInfo(1, label="d"))\n')
    assert webui_host.option_defaults(settings) == {"dp_a": False, "dp_b": "{", "dp_d": 1}
    webui_host.write_config(tmp_path, {"live_previews_enable": True, "dp_a": False}, keep=True)
    webui_host.write_config(tmp_path)
    webui_host.write_config(tmp_path, {"live_previews_enable": True, "dp_a": True}, keep=True)
    assert json.loads((tmp_path / "config.json").read_text()) == {"live_previews_enable": False, "dp_a": False}


def test_extensions_go_into_both_instances_on_a_branch_and_change_the_start_flags(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    git("init", "-q", cwd=source)
    (source / "requirements.txt").write_text("")
    git("add", ".", cwd=source)
    git("commit", "-q", "-m", "one", cwd=source)
    first = git("rev-parse", "HEAD", cwd=source)
    (source / "scripts.py").write_text("")
    git("add", ".", cwd=source)
    git("commit", "-q", "-m", "two", cwd=source)
    dest = tmp_path / "host"
    (dest / "webui" / "extensions-builtin" / "sd_forge_controlnet").mkdir(parents=True)
    (dest / "host.json").write_text(json.dumps({"host": "forge"}))
    host = webui_host.Host(dest)
    assert "--disable-extra-extensions" in webui_host.plain_flags(host)
    known = {"commit": first, "flags": ["--ad-x"], "env": {"E": "{dest}"}}
    monkeypatch.setitem(webui_host.EXTENSIONS, "me/adtool", known)
    args = webui_host.parse(["extensions", "--dest", str(dest), "--extension", f"me/adtool={source}",
                             "--extension", f"Mikubill/sd-webui-controlnet={source}"])
    webui_host.extensions(args)
    for instance in webui_host.INSTANCES:
        clone = host.data_dir(instance) / "extensions" / "adtool"
        assert git("rev-parse", "HEAD", cwd=clone) == first and git("branch", "--show-current", cwd=clone)
        assert not (host.data_dir(instance) / "extensions" / "sd-webui-controlnet").exists()  # Forge has it built in
    assert host.data_dir("plain") == dest / "data-plain"
    assert host.extensions() == {"adtool": {"repo": "me/adtool", "source": str(source), "commit": first}}
    assert "--disable-extra-extensions" not in webui_host.plain_flags(host)
    assert webui_host.extension_extras(host, "ext") == (["--ad-x"], {"E": "{dest}"})
    second = git("rev-parse", "HEAD", cwd=source)
    webui_host.extensions(webui_host.parse(["extensions", "--dest", str(dest), "--extension",
                                            f"me/adtool={source}@{second}"]))
    assert git("rev-parse", "HEAD", cwd=dest / "data-plain" / "extensions" / "adtool") == second
    (dest / "data-plain" / "extensions" / "adtool").rename(tmp_path / "gone")
    assert webui_host.extension_extras(host, "plain") == ([], {})


def test_start_ports_stay_the_hosts_ports_after_a_stop(tmp_path):
    (tmp_path / "host.json").write_text(json.dumps({"host": "a1111", "ports": {"ext": 7880, "plain": 7882}}))
    host = webui_host.Host(tmp_path)
    host.record_ports(["plain"])  # what stop records
    assert host.ports == webui_host.Host(tmp_path).ports == {"ext": 7880, "plain": 7882}
    controlnet_set = webui_host.Host(tmp_path, fixtures="fixtures-controlnet")
    assert controlnet_set.fill("{fixtures}") == f"{tmp_path}/fixtures-controlnet"


def test_adetailer_model_finds_one_centred_region_on_any_image(tmp_path):
    pytest.importorskip("ultralytics")
    from PIL import Image
    from ultralytics import YOLO

    from tests.support import adetailer_model

    path = adetailer_model.save(adetailer_model.build(), tmp_path / "face_yolov8n.pt")
    for size in ((64, 64), (512, 512)):
        found = YOLO(path)(Image.new("RGB", size, (9, 99, 199)), conf=0.3, verbose=False)[0].boxes
        assert len(found) == 1 and found.conf[0] > 0.999
        width, height = size
        assert found.xyxy[0].tolist() == pytest.approx([width / 4, height / 4, width * 3 / 4, height * 3 / 4], abs=1)
