#!/usr/bin/env python3
"""Install and run a WebUI host for the live tests (tests/live), offline, on a CPU.

    python tests/support/webui_host.py install --host a1111|forge|reforge|classic|forge2 --source GIT_DIR_OR_TREE
        --dest DIR [--family sd1[,sdxl,sd3,flux,chroma]] [--commit REV] [--repos FOLDER ...] [--repo NAME=PATH ...]
        [--python PYTHON] [--extension NAME[=GIT_DIR][@COMMIT] ...]
    python tests/support/webui_host.py extensions --dest DIR --extension NAME[=GIT_DIR][@COMMIT] ...
        [--repos FOLDER ...]
    python tests/support/webui_host.py start  --dest DIR [--only ext|plain] [--ports EXT,PLAIN] [--timeout S]
        [--flag=--medvram ...] [--fixtures FOLDER]
    python tests/support/webui_host.py stop   --dest DIR [--only ext|plain]
    python tests/support/webui_host.py status --dest DIR [--ports EXT,PLAIN]

install, into DIR (outside this project):
  DIR/webui               the WebUI: a shared clone of --source (a bare git dir or a git work tree)
                          at --commit (default: the commit pinned in HOSTS), or a copy of a
                          directory that is not a git repository
  DIR/webui/repositories  the helper repositories its launcher would clone, at their pinned
                          commits, from local git dirs only: --repo NAME=PATH (NAME is the folder
                          under repositories/ or the GitHub owner/name), else looked up in each
                          --repos FOLDER as OWNER+NAME/repo (the layout of the library's `fetch`),
                          OWNER+NAME, NAME or NAME.git
  DIR/src                 pinned sources of extra pip packages (openai/CLIP), found the same way
  DIR/webui/venv          the host's Python and torch, its requirements minus torch (and with the
                          host's replacements of what is not on PyPI), the extras
  DIR/fixtures            made by this project's fixture maker with the venv's python, for the
                          model families of --family (default sd1 only: small and quick; the live
                          suite skips the other families' cases)
  DIR/webui/extensions/sd-webui-autolora -> this checkout; config.json with live previews off
  DIR/data-plain          data dir of the instance without the extension (own config.json)
  extensions              what `extensions` does (below), for each --extension

extensions adds WebUI extensions to both instances of an installed host (no reinstall), from local git
dirs: NAME is a GitHub owner/name, GIT_DIR its git dir (default: looked up in --repos as the helpers
are), COMMIT what to check out (default: the commit pinned in EXTENSIONS, else the source's HEAD).
  DIR/webui/extensions/NAME, DIR/data-plain/extensions/NAME
                          a shared clone each (extensions write into their folders), on branch
                          webui-host at COMMIT: the ext instance reads its data dir's (the WebUI
                          folder's) extensions/, the plain one its --data-dir's; with extensions
                          there, the plain instance starts without --disable-extra-extensions
                          (which would switch them off too) and still has no AutoLoRA
  DIR/webui/venv          what the extension's install.py would install (the WebUI runs none with
                          --skip-prepare-environment), read from its checkout, in one pip call under
                          the torch pin; an extension not in EXTENSIONS gets its requirements.txt
  then, per extension in EXTENSIONS, what it needs to start offline:
    Bing-su/adetailer     ultralytics, mediapipe, rich; DIR/fixtures/adetailer/face_yolov8n.pt (a seeded
                          YOLOv8n that finds one centred region on any image: adetailer_model.py),
                          linked into each data dir's models/adetailer; start adds --ad-no-huggingface
                          (no Hugging Face look-ups), YOLO_OFFLINE=true and YOLO_CONFIG_DIR=DIR/ultralytics
    adieyal/sd-dynamic-prompts
                          dynamicprompts~=0.31, send2trash; the defaults of its dp_* settings written to
                          both config.json files: it registers them too late for A1111 1.9+ and Forge,
                          which otherwise fail each generation on opts.dp_ignore_whitespace
    Mikubill/sd-webui-controlnet
                          its requirements.txt and onnxruntime (not its GitHub wheels); for A1111 the
                          project's ControlNet set in DIR/fixtures-controlnet (controlnet_fixture.py:
                          the tiny fixture UNet cannot take a ControlNet), listed through
                          --controlnet-dir; `start --fixtures fixtures-controlnet` runs the instances on
                          that set's checkpoint (about 5 GB each), where a unit works. Not added where
                          the WebUI has ControlNet built in (Forge, reForge)
    hako-mikan/sd-webui-regional-prompter, hako-mikan/sd-webui-lora-block-weight
                          nothing beyond the WebUI's packages
  host.json "extensions" records each one's source and commit; status lists them.

start runs both instances (or --only one) detached, logs in DIR/logs, waits until each API answers
and prints the environment for the live suite, e.g.

    AUTOLORA_WEBUI_URL=http://127.0.0.1:7860 AUTOLORA_PLAIN_WEBUI_URL=http://127.0.0.1:7862

--ports EXT,PLAIN replaces the host type's ports (HOSTS) where other WebUIs already use them; start
records them in DIR/host.json, where later starts, stop and status find them (start --only one,
after a stop, keeps to them). --fixtures FOLDER takes checkpoints, LoRAs and HF_HOME from DIR/FOLDER
instead of DIR/fixtures (e.g. fixtures-controlnet). stop ends the instances that start recorded in
DIR/run. Clones are `git clone --shared`: they borrow the source's objects, so keep the source git dirs.
Files whose objects a source lacks (large files left out of snapshots) are left out by a sparse
checkout; the hosts do not need them.

A host type is one entry in HOSTS. Standard library only: this runs before any venv exists.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
EXTENSION_NAME = "sd-webui-autolora"
EXTENSION_BRANCH = "webui-host"  # the branch of each added extension's clone, at its commit
FIXTURE_MAKER = PROJECT / "tests" / "support" / "make_fixtures.py"
FAMILY_NAMES = PROJECT / "tests" / "support" / "fixtures" / "names.py"  # FAMILIES; no torch there
ADETAILER_MAKER = PROJECT / "tests" / "support" / "adetailer_model.py"
CONTROLNET_MAKER = PROJECT / "tests" / "support" / "controlnet_fixture.py"

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1",
       "GRADIO_ANALYTICS_ENABLED": "False"}
FLAGS = ["--skip-prepare-environment", "--skip-install", "--skip-torch-cuda-test", "--api",
         "--server-name", "127.0.0.1"]
PLAIN_FLAGS = ["--data-dir", "{dest}/data-plain", "--disable-extra-extensions"]
MODEL_DIRS = ["--no-download-sd-model", "--ckpt-dir", "{fixtures}/Stable-diffusion", "--lora-dir", "{fixtures}/Lora"]
FORGE_CPU = ["--skip-python-version-check", "--always-cpu"]
ASSETS = ("AUTOMATIC1111/stable-diffusion-webui-assets", "6f7db241d2f8ba7457bac5ca9753331f0c266917")
BLIP = ("salesforce/BLIP", "48211a1594f1321b00f14c9f7a5b4813144b2fb9")
# Stability-AI deleted its repository; reForge now pins a fork of it (joypaul162, f16630a9) that no
# mirror has. Its last upstream commit, A1111's and Classic's pin, serves reForge too.
STABILITY = ("Stability-AI/stablediffusion", "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf")
GENERATIVE = ("Stability-AI/generative-models", "45c443b316737a4ab6e40413d7794a7f5657c19f")
K_DIFFUSION = ("crowsonkb/k-diffusion", "ab527a9a6d347f364e3d185ba6d714e22d80cb3c")
CLIP = {"CLIP": ("openai/CLIP", "d50d76daa670286dd6cacf3bcd80b5e4823fc8e1")}
CLIP_PIP = [["wheel"], ["--no-build-isolation", "{src}/CLIP"]]  # the launcher's GitHub zip, from the pinned source

# One entry per host type; pins as the host's modules/launch_utils.py has them.
#   commit        the WebUI commit checked out unless --commit says otherwise
#   python        X.Y for the venv
#   torch         installed first, then a constraint of every later pip call
#   requirements  the WebUI's file, installed without its torch lines
#   replace       requirement lines (regular expressions) -> what pip installs instead (not on PyPI)
#   repositories  folder under webui/repositories -> (GitHub owner/name, commit) the launcher would clone
#   sources       folder under DIR/src -> (GitHub owner/name, commit), for the pip extras
#   pip_first     `pip install` argument lists, in order, before the requirements
#   pip           the same, after the requirements
#   fixtures      the fixture maker's --host
#   env, flags    added to ENV and FLAGS for both instances
#   ports         where the live suite's AUTOLORA_WEBUI_URL (ext) and AUTOLORA_PLAIN_WEBUI_URL (plain) point
# In strings, {dest}, {fixtures} and {src} stand for DIR, DIR/fixtures and DIR/src.
HOSTS = {
    "a1111": {  # AUTOMATIC1111 v1.10.1
        "commit": "82a973c04367123ae98bd9abdf80d9eda9b910e2",
        "python": "3.10",
        "torch": ["torch==2.1.2", "torchvision==0.16.2"],
        "requirements": "requirements_versions.txt",
        "replace": {},
        "repositories": {
            "stable-diffusion-webui-assets": ASSETS,
            "stable-diffusion-stability-ai": STABILITY,
            "generative-models": GENERATIVE,
            "k-diffusion": K_DIFFUSION,
            "BLIP": BLIP,
        },
        "sources": CLIP,
        "pip_first": [],
        "pip": CLIP_PIP,
        "fixtures": "a1111",
        "env": {"HF_HOME": "{fixtures}/hf_home"},
        "flags": ["--use-cpu", "all", "--no-half", "--precision", "full", *MODEL_DIRS],
        "ports": {"ext": 7860, "plain": 7862},
    },
    "forge": {  # lllyasviel/stable-diffusion-webui-forge, 2025-06-26
        "commit": "dfdcbab685e57677014f05a3309b48cc87383167",
        "python": "3.10",
        "torch": ["torch==2.3.1", "torchvision==0.18.1"],
        "requirements": "requirements_versions.txt",
        "replace": {},
        "repositories": {
            "huggingface_guess": ("lllyasviel/huggingface_guess", "84826248b49bb7ca754c73293299c4d4e23a548d"),
            "stable-diffusion-webui-assets": ASSETS,
            "BLIP": BLIP,
        },
        "sources": {},
        "pip_first": [],
        "pip": [["joblib"]],  # the built-in soft inpainting imports it; Forge does not list it
        "fixtures": "forge",
        "env": {},
        "flags": [*FORGE_CPU, "--do-not-download-clip", *MODEL_DIRS],
        "ports": {"ext": 7861, "plain": 7863},
    },
    "reforge": {  # Panchovix/stable-diffusion-webui-reForge main, 2026-03-11
        "commit": "3b56b268ad9158ee8b30900973b6ccda4ec22241",
        "python": "3.10",
        "torch": ["torch==2.9.0", "torchvision==0.24.0"],  # PyPI's CUDA build; runs on the CPU
        "requirements": "requirements_versions.txt",
        "replace": {r"https://github\.com/Panchovix/pydantic-fixreforge/.*/pydantic-1\.10\.15-.*\.whl":
                    "pydantic==1.10.15"},  # a GitHub release wheel
        "repositories": {
            "stable-diffusion-webui-assets": ASSETS,
            "stable-diffusion-stability-ai": STABILITY,
            "generative-models": GENERATIVE,
            "k-diffusion": K_DIFFUSION,
            "BLIP": BLIP,
        },
        "sources": CLIP,  # open_clip: open-clip-torch from the requirements provides it
        "pip_first": [],
        "pip": CLIP_PIP,
        "fixtures": "forge",
        "env": {},
        "flags": [*FORGE_CPU, "--do-not-download-clip", *MODEL_DIRS],
        "ports": {"ext": 7864, "plain": 7865},
    },
    "classic": {  # Haoming02/sd-webui-forge-classic, branch classic, 2025-02-21
        "commit": "1f95d7170189cf93952aca122c1ee2f306a07e4c",
        "python": "3.10",
        "torch": ["torch==2.6.0", "torchvision==0.21.0"],
        "requirements": "requirements.txt",
        "replace": {},
        "repositories": {  # k-diffusion is vendored, no BLIP
            "stable-diffusion-webui-assets": ASSETS,
            "stable-diffusion-stability-ai": STABILITY,
            "generative-models": GENERATIVE,
        },
        "sources": CLIP,
        "pip_first": [],
        "pip": CLIP_PIP,
        "fixtures": "forge",
        "env": {},
        "flags": [*FORGE_CPU, *MODEL_DIRS],  # Classic has no --do-not-download-clip
        "ports": {"ext": 7866, "plain": 7867},
    },
    "forge2": {  # papaioannou-themistoklis/WebUI-Neo-Forge main, 2025-10-05 (Forge Classic's neo line)
        "commit": "7862a9646a01c7268bec3a425d3ea80598d72e48",
        "python": "3.11",
        "torch": ["torch==2.8.0", "torchvision==0.23.0"],
        "requirements": "requirements.txt",
        "replace": {},
        "repositories": {},  # huggingface_guess, k_diffusion etc. are vendored
        "sources": {},
        # the launcher installs gradio apart: with requirements.txt's Pillow pin in one call pip finds no solution
        "pip_first": [["gradio==4.40.0", "gradio_imageslider==0.0.20", "gradio_rangeslider==0.0.6"]],
        "pip": [],
        "fixtures": "forge",
        "env": {},
        # no --no-download-sd-model / --do-not-download-clip (argparse rejects them); without
        # --attention-pytorch every CPU generation fails in the basic attention
        "flags": [*FORGE_CPU, "--attention-pytorch", "--ckpt-dirs", "{fixtures}/Stable-diffusion",
                  "--lora-dirs", "{fixtures}/Lora"],
        "ports": {"ext": 7868, "plain": 7869},
    },
}
INSTANCES = ("ext", "plain")
STARTED = "Startup time:"  # in the log once the WebUI has set up its APIs


class Host:
    """The paths of one installed (or to be installed) host under DEST, and its instances' ports:
    `ports` if given, else those the last start recorded, else the host type's."""

    def __init__(self, dest, kind=None, ports=None, fixtures=None):
        self.dest = Path(dest).resolve()
        self.kind = kind or json.loads(self.record.read_text())["host"]
        self.spec = HOSTS[self.kind]
        self.webui = self.dest / "webui"
        self.python = self.webui / "venv" / "bin" / "python"
        self.fixtures = self.dest / (fixtures or "fixtures")
        self.places = {"dest": self.dest, "fixtures": self.fixtures, "src": self.dest / "src"}
        self.ports = {**self.spec["ports"], **self.chosen_ports(), **self.recorded_ports(), **(ports or {})}

    @property
    def record(self):
        return self.dest / "host.json"

    @property
    def ports_file(self):
        return self.dest / "run" / "ports.json"

    def chosen_ports(self):
        """The --ports of the last start that had them (host.json): this host's ports from then on."""
        try:
            return json.loads(self.record.read_text()).get("ports", {})
        except (OSError, ValueError):
            return {}

    def recorded_ports(self):
        try:
            return json.loads(self.ports_file.read_text())
        except (OSError, ValueError):
            return {}

    def record_ports(self, instances, ports=None):
        """Record the ports of `instances` (with `ports` None: forget them)."""
        recorded = {i: p for i, p in self.recorded_ports().items() if i not in instances}
        recorded.update({i: ports[i] for i in instances} if ports else {})
        self.ports_file.parent.mkdir(parents=True, exist_ok=True)
        self.ports_file.write_text(json.dumps(recorded))

    def fill(self, text):
        return text.format(**self.places)

    def url(self, instance):
        return f"http://127.0.0.1:{self.ports[instance]}"

    def pid_file(self, instance):
        return self.dest / "run" / f"{instance}.pid"

    def log_file(self, instance):
        return self.dest / "logs" / f"{instance}.log"

    def data_dir(self, instance):
        """The instance's data dir, where the WebUI reads extensions/ and models/ (paths_internal.py:
        --data-dir, by default the WebUI's own folder)."""
        return self.webui if instance == "ext" else self.dest / "data-plain"

    def extensions(self):
        """The extensions the kit added: folder under extensions/ -> {repo, source, commit}."""
        return json.loads(self.record.read_text()).get("extensions", {})

    def has_extension(self, instance, folder):
        return (self.data_dir(instance) / "extensions" / folder).is_dir()


def say(message):
    print(f"webui_host: {message}", flush=True)


def run(cmd, env=None, **kwargs):
    say("$ " + " ".join(map(str, cmd)))
    began = time.monotonic()
    done = subprocess.run([str(c) for c in cmd], env={**os.environ, **ENV, **(env or {})}, **kwargs)
    if done.returncode:
        sys.exit(f"webui_host: failed ({done.returncode}): {' '.join(map(str, cmd))}\n{done.stderr or ''}")
    if time.monotonic() - began >= 10:
        say(f"  ({time.monotonic() - began:.0f} s)")
    return done


def is_git(path):
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def missing_blobs(repo, commit):
    """Paths of the files at `commit` whose objects `repo` lacks (snapshots leave out large files)."""
    git = ["git", "-C", str(repo)]
    tree = subprocess.run(git + ["ls-tree", "-r", "-z", commit], capture_output=True, text=True, check=True).stdout
    blobs = [(meta.split()[2], path) for meta, path in (entry.split("\t", 1) for entry in tree.split("\0") if entry)
             if meta.split()[1] == "blob"]
    checked = subprocess.run(git + ["cat-file", "--batch-check"], input="".join(f"{oid}\n" for oid, _ in blobs),
                             capture_output=True, text=True, check=True).stdout.splitlines()
    return [path for (_, path), line in zip(blobs, checked) if line.endswith(" missing")]


def check_out(source, target, commit):
    """A shared clone of git dir `source` at `commit` (a sparse checkout without the files whose
    objects `source` lacks), or a copy of a plain directory."""
    if target.exists():
        say(f"{target} exists: kept")
        return
    if not is_git(source):
        say(f"copy {source} -> {target}")
        shutil.copytree(source, target, symlinks=True)
        return
    run(["git", "clone", "-q", "--shared", "--no-checkout", source, target])
    absent = missing_blobs(target, commit)
    if absent:
        run(["git", "-C", target, "sparse-checkout", "init", "--no-cone"])
        patterns = ["/*"] + ["!/" + re.sub(r"([\\*?\[])", r"\\\1", path) for path in absent]
        (target / ".git" / "info" / "sparse-checkout").write_text("\n".join(patterns) + "\n")
        say(f"{len(absent)} file(s) whose objects the source lacks, left out: {' '.join(absent)}")
    run(["git", "-C", target, "checkout", "-q", commit], capture_output=True, text=True)


def find_source(name, github, named, folders):
    """The local git dir for helper `name` (GitHub `github`): --repo first, then --repos folders."""
    for key in (name, github):
        if key in named:
            return Path(named[key])
    owner_name, short = github.replace("/", "+"), github.split("/")[1]
    for folder in folders:
        for candidate in (f"{owner_name}/repo", owner_name, short, f"{short}.git"):
            if (Path(folder) / candidate).is_dir():
                return Path(folder) / candidate
    sys.exit(f"webui_host: no local copy of {github} (for {name}): pass --repo {name}=PATH or --repos FOLDER")


def find_python(version, given):
    """--python, else pyenv's newest X.Y.* (its shims answer only for the selected version), else PATH's."""
    pyenv = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser() / "versions"
    newest = max(pyenv.glob(f"{version}.*/bin/python"), default=None,
                 key=lambda path: [int(n) for n in re.findall(r"\d+", path.parts[-3])])
    found = given or newest or shutil.which(f"python{version}")
    if not found:
        sys.exit(f"webui_host: no Python {version} found: pass --python")
    return found


TORCH_LINE = re.compile(r"\s*(torch|torchvision)\s*([=<>!~;#\[@]|$)", re.IGNORECASE)


def without_torch(requirements, out, replace=None):
    """Copy a requirements file without its torch/torchvision lines (torch is pinned per host);
    a line that matches a pattern of `replace` in full becomes that pattern's value."""
    lines = []
    for line in requirements.read_text().splitlines():
        if TORCH_LINE.match(line):
            continue
        lines.append(next((new for old, new in (replace or {}).items() if re.fullmatch(old, line.strip())), line))
    out.write_text("\n".join(lines) + "\n")
    return out


def families(text):
    """--family: comma-separated model families the fixture maker knows."""
    known = re.search(r"^FAMILIES = \((.*)\)", FAMILY_NAMES.read_text(), re.MULTILINE).group(1)
    known = re.findall(r'"(\w+)"', known)
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    if not chosen or set(chosen) - set(known):
        raise argparse.ArgumentTypeError(f"families are {','.join(known)}; got {text!r}")
    return ",".join(dict.fromkeys(chosen))


def ports(text):
    """--ports EXT,PLAIN: two different TCP ports."""
    try:
        ext, plain = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected EXT,PLAIN (two port numbers), got {text!r}") from None
    if ext == plain or not all(0 < port < 65536 for port in (ext, plain)):
        raise argparse.ArgumentTypeError(f"expected two different ports in 1-65535, got {text!r}")
    return {"ext": ext, "plain": plain}


def write_config(data_dir, settings=None, keep=False):
    """Set `settings` (default: live previews off) in DATA_DIR/config.json; with `keep`, only those not set there."""
    config = Path(data_dir) / "config.json"
    current = json.loads(config.read_text()) if config.is_file() else {}
    settings = {"live_previews_enable": False} if settings is None else settings
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({**current, **settings, **(current if keep else {})}, indent=4))


def link_extension(host):
    link = host.webui / "extensions" / EXTENSION_NAME
    if link.is_symlink():
        link.unlink()
    link.symlink_to(PROJECT, target_is_directory=True)
    say(f"linked {link} -> {PROJECT}")


def install_webui(host, args):
    check_out(Path(args.source), host.webui, args.commit or host.spec["commit"])


def install_helpers(host, args):
    named = dict(item.split("=", 1) for item in args.repo)
    for folder, table in ((host.webui / "repositories", "repositories"), (host.dest / "src", "sources")):
        for name, (github, commit) in host.spec[table].items():
            folder.mkdir(parents=True, exist_ok=True)
            check_out(find_source(name, github, named, args.repos), folder / name, commit)


def install_venv(host, args):
    if not host.python.exists():
        run([find_python(host.spec["python"], args.python), "-m", "venv", host.webui / "venv"])
    constraints = host.dest / "torch-constraints.txt"
    constraints.write_text("\n".join(host.spec["torch"]) + "\n")
    pip = [host.python, "-m", "pip", "install"]
    run(pip + host.spec["torch"])
    requirements = without_torch(host.webui / host.spec["requirements"], host.dest / "requirements-no-torch.txt",
                                 host.spec["replace"])
    for extra in host.spec["pip_first"] + [["-r", requirements]] + host.spec["pip"]:
        run(pip + ["-c", constraints] + [host.fill(str(arg)) for arg in extra])


def install_fixtures(host, args):
    run([host.python, FIXTURE_MAKER, host.fixtures, "--host", host.spec["fixtures"], "--family", args.family])


def install_links(host, args):
    link_extension(host)
    write_config(host.webui)
    write_config(host.dest / "data-plain")


# Extensions that LoRA users stack, added to both instances (install --extension, extensions)
# ---------------------------------------------------------------------------------------------
# The kit does offline what each extension's install.py would do (the WebUI runs no install.py
# with --skip-prepare-environment): the requirements read from the extension's checkout, pip-installed
# into the host's venv under the torch constraint, then what it needs so that it downloads nothing
# at start.

def adetailer_requirements(folder):
    """ADetailer's install.py installs each (package, min, max) of its `deps` list that is missing or
    out of range, as `package>=min,<=max`."""
    for node in ast.walk(ast.parse((folder / "install.py").read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "deps" for t in node.targets):
            return [package + ",".join(f"{op}{version}" for op, version in ((">=", low), ("<=", high)) if version)
                    for package, low, high in ast.literal_eval(node.value)]
    sys.exit(f"webui_host: no `deps = [...]` in {folder / 'install.py'}")


def pyproject_requirements(folder):
    """Dynamic Prompts' install.py installs its pyproject.toml's [project] dependencies that are not
    satisfied (sd_dynamic_prompts/version_tools.py)."""
    text = (folder / "pyproject.toml").read_text()
    try:
        import tomllib  # Python 3.11+
        return list(tomllib.loads(text)["project"]["dependencies"])
    except ImportError:
        project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL).group(1)
        listed = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", project, re.MULTILINE | re.DOTALL).group(1)
        return re.findall(r'"([^"]+)"', listed)


MEDIAPIPE = "mediapipe>=0.10.13,<=0.10.15"


def controlnet_requirements(folder):
    """Mikubill's install.py: every line of requirements.txt, then onnxruntime (not -gpu: no CUDA here).
    Its other installs need GitHub (release wheels of handrefinerportable, depth_anything,
    depth_anything_v2 and dsine; insightface only on Windows): left out, as install.py leaves a failed
    one out ("some preprocessors may not work"); none of them is needed to load."""
    lines = (folder / "requirements.txt").read_text().splitlines()
    wanted = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")] + ["onnxruntime"]
    # its unpinned mediapipe takes the newest, which has no `mediapipe.solutions`: controlnet_aux fails to
    # import and the extension does not load ("Script 'controlnet' not found"); ADetailer's range has them
    return [MEDIAPIPE if line == "mediapipe" else line for line in wanted]


def requirements_txt(folder):
    """An extension the kit does not know: its requirements.txt, if any (its install.py is not run)."""
    path = folder / "requirements.txt"
    if (folder / "install.py").exists():
        say(f"{folder.name}: install.py is not run; installing its requirements.txt only" if path.exists() else
            f"{folder.name}: install.py is not run and there is no requirements.txt: check what it needs")
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split("#")[0].strip() for line in lines
            if line.split("#")[0].strip() and not TORCH_LINE.match(line)]


def option_defaults(path):
    """{key: default} of the options a file registers as opts.add_option(key=..., info=OptionInfo(default, ...)),
    where the default is a literal."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_option"):
            continue
        given = {**dict(zip(("key", "info"), node.args)), **{k.arg: k.value for k in node.keywords}}
        key, info = given.get("key"), given.get("info")
        if isinstance(key, ast.Constant) and isinstance(info, ast.Call) and info.args:
            try:
                found[key.value] = ast.literal_eval(info.args[0])
            except ValueError:  # computed (the magic prompt model list): read with hasattr() by the extension
                pass
    return found


def adetailer_model(host, folder, instances):
    """ADetailer lists the *.pt under MODELS/adetailer (MODELS: the instance's data dir's models/) beside
    the models it would download from Hugging Face (face_yolov8n.pt, ...), which --ad-no-huggingface
    (start) keeps it from trying. One seeded YOLOv8n made offline, linked as face_yolov8n.pt into each."""
    model = host.fixtures / "adetailer" / "face_yolov8n.pt"
    if not model.exists():
        run([host.python, ADETAILER_MAKER, model],
            env={k: host.fill(v) for k, v in EXTENSIONS["Bing-su/adetailer"]["env"].items()})
    for instance in instances:
        link = host.data_dir(instance) / "models" / "adetailer" / model.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(model)
        say(f"linked {link} -> {model}")


def dynamic_prompts_settings(host, folder, instances):
    """Dynamic Prompts 2.17.1 (and before) adds its settings (opts.dp_*) from an on_ui_settings callback
    that its Script.__init__ registers; A1111 1.9+ (and Forge) call those callbacks before they make
    the Script objects, so on a fresh start the settings are never added and every generation fails
    with "'Options' object has no attribute 'dp_ignore_whitespace'" (its issue #754, fixed after the
    snapshots' commit by #760). Options read a key found in config.json, so the kit writes the
    defaults of the settings the extension registers into each instance's config.json."""
    defaults = option_defaults(folder / "sd_dynamic_prompts" / "settings.py")
    for instance in instances:
        write_config(host.data_dir(instance), defaults, keep=True)
    say(f"{folder.name}: {len(defaults)} setting defaults written to config.json: {' '.join(defaults)}")


def controlnet_fixtures(host, folder, instances):
    """A unit needs a ControlNet model, and Mikubill's ControlNet adds SD1.5-width features that A1111's
    tiny fixture UNet cannot take: make the project's ControlNet set (controlnet_fixture.py --host
    a1111: a checkpoint of SD1.5's UNet widths, its LoRA files, hf_home and the ControlNet) in
    DIR/fixtures-controlnet; `start --fixtures fixtures-controlnet` runs on it (about 5 GB an instance)."""
    if host.spec["fixtures"] != "a1111":
        return
    out = host.dest / "fixtures-controlnet"
    if (out / "ControlNet").is_dir():
        say(f"{out} exists: kept")
        return
    run([host.python, CONTROLNET_MAKER, out, "--host", "a1111"])


# GitHub owner/name -> what the kit does for it:
#   commit        checked out unless NAME=GIT_DIR@COMMIT says otherwise (the versions this project tried)
#   requirements  function(checkout) -> pip requirement specifiers, as its install.py installs them
#   prepare       functions(host, checkout, instances) run after the requirements
#   builtin       a folder of the WebUI's extensions-builtin/ that provides it: then it is not added
#   flags, env    for an instance that has it (start); strings as in HOSTS
EXTENSIONS = {
    "Bing-su/adetailer": {  # v25.3.0
        "commit": "36189cbea735b85fd01e98ac42002b8ce6f0e41d",
        "requirements": adetailer_requirements,
        "prepare": [adetailer_model],
        "flags": ["--ad-no-huggingface"],  # its preload.py: take models from models/adetailer only
        # ultralytics: no online checks (hub events, fonts), its settings inside DIR
        "env": {"YOLO_OFFLINE": "true", "YOLO_CONFIG_DIR": "{dest}/ultralytics"},
    },
    "hako-mikan/sd-webui-regional-prompter": {"commit": "be623452203b396ed87b85583a3cfd56e8157214"},
    "hako-mikan/sd-webui-lora-block-weight": {"commit": "b403cb7300f288360023c2a1978b86a361934e24"},
    "adieyal/sd-dynamic-prompts": {  # v2.17.1
        "commit": "e8326b5eee92c78f3bc2aa424d5ea4a91bed2c38",
        "requirements": pyproject_requirements,
        "prepare": [dynamic_prompts_settings],
    },
    "Mikubill/sd-webui-controlnet": {  # 1.1.455
        "commit": "56cec5b2958edf3b1807b7e7b2b1b5186dbd2f81",
        "requirements": controlnet_requirements,
        "prepare": [controlnet_fixtures],
        "builtin": "sd_forge_controlnet",  # Forge, reForge: ControlNet is built in
        "flags": ["--controlnet-dir", "{dest}/fixtures-controlnet/ControlNet"],  # its preload.py; lists the fixture
    },
}


def extension_spec(text):
    """--extension NAME[=GIT_DIR][@COMMIT]: NAME is a GitHub owner/name (or its name part, for one of
    EXTENSIONS); without GIT_DIR it is looked up in --repos as the helpers are."""
    name, _, source = text.partition("=")
    rest, at, commit = (source or name).rpartition("@")
    if at and "/" not in commit and commit:
        if source:
            source = rest
        else:
            name = rest
    else:
        commit = None
    known = {key.lower(): key for key in EXTENSIONS} | {key.split("/")[1].lower(): key for key in EXTENSIONS}
    github = known.get(name.lower(), name)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", github) and not source:
        raise argparse.ArgumentTypeError(f"{text!r}: NAME is a GitHub owner/name (known: {', '.join(EXTENSIONS)}) "
                                         "or give its git dir as NAME=GIT_DIR")
    return {"repo": github, "source": source or None, "commit": commit}


def resolve(source, commit):
    """The full commit of `commit` (default HEAD) in git dir `source`."""
    done = subprocess.run(["git", "-C", str(source), "rev-parse", "--verify", f"{commit or 'HEAD'}^{{commit}}"],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"webui_host: {source} has no commit {commit or 'HEAD'}: {done.stderr.strip()}")
    return done.stdout.strip()


def add_extension(host, wanted, repos):
    """Clone one extension into each instance's extensions/ (a shared clone per instance: extensions
    write into their folders) at its commit; returns (its record, its checkout) or None when the
    WebUI has it built in."""
    known = EXTENSIONS.get(wanted["repo"], {})
    folder = wanted["repo"].split("/")[-1]
    builtin = known.get("builtin")
    if builtin and (host.webui / "extensions-builtin" / builtin).is_dir():
        say(f"{wanted['repo']}: not added, {host.kind} has it built in (extensions-builtin/{builtin})")
        return None
    source = Path(wanted["source"]) if wanted["source"] else find_source(folder, wanted["repo"], {}, repos)
    commit = resolve(source, wanted["commit"] or known.get("commit"))
    for instance in INSTANCES:
        target = host.data_dir(instance) / "extensions" / folder
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and is_git(target) and resolve(target, "HEAD") != commit:
            say(f"{target}: from {resolve(target, 'HEAD')[:10]} to {commit[:10]}")
        else:
            check_out(source, target, commit)
        # on a branch: the WebUI reads each extension's branch, and logs a traceback for a detached HEAD
        run(["git", "-C", target, "checkout", "-q", "-B", EXTENSION_BRANCH, commit], capture_output=True, text=True)
    record = {"repo": wanted["repo"], "source": str(source.resolve()), "commit": commit}
    return record, host.webui / "extensions" / folder


def install_extensions(host, args):
    """Add --extension's extensions to both instances: clones, requirements (one pip call), preparations."""
    if not args.extension:
        return
    record = json.loads(host.record.read_text())
    added = {}
    for wanted in args.extension:
        done = add_extension(host, wanted, args.repos)
        if done:
            added[done[1].name] = done
    requirements = []
    for entry, checkout in added.values():
        requirements += EXTENSIONS.get(entry["repo"], {}).get("requirements", requirements_txt)(checkout)
    if requirements:
        # the WebUI's torch and NumPy stay: ControlNet's newest OpenCV wheels pull NumPy 2, which A1111's
        # torch 2.1 cannot use ("Numpy is not available")
        numpy = subprocess.run([host.python, "-c", "import numpy; print(numpy.__version__)"], check=True,
                               capture_output=True, text=True).stdout.strip()
        constraints = host.dest / "extension-constraints.txt"
        constraints.write_text("\n".join([*host.spec["torch"], f"numpy=={numpy}"]) + "\n")
        run([host.python, "-m", "pip", "install", "-c", constraints, *requirements])
    for folder, (entry, checkout) in added.items():
        for prepare in EXTENSIONS.get(entry["repo"], {}).get("prepare", []):
            prepare(host, checkout, INSTANCES)
        say(f"{folder}: {entry['repo']} at {entry['commit'][:10]} in both instances")
    record["extensions"] = {**record.get("extensions", {}), **{folder: entry for folder, (entry, _) in added.items()}}
    host.record.write_text(json.dumps(record, indent=4))


def extensions(args):
    host = Host(args.dest)
    began = time.monotonic()
    install_extensions(host, args)
    say(f"extensions: done in {time.monotonic() - began:.0f} s")
    for folder, entry in host.extensions().items():
        print(f"  {folder:32} {entry['repo']} {entry['commit'][:10]}")


def extension_extras(host, instance):
    """The flags and environment that the instance's extensions add."""
    flags, env = [], {}
    for folder, entry in host.extensions().items():
        if host.has_extension(instance, folder):
            known = EXTENSIONS.get(entry["repo"], {})
            flags += known.get("flags", [])
            env.update(known.get("env", {}))
    return flags, env


def install(args):
    host = Host(args.dest, args.host)
    if host.dest == PROJECT or PROJECT in host.dest.parents:
        sys.exit("webui_host: --dest must be outside this project")
    neo_only = sorted(set(args.family.split(",")) & {"flux", "chroma"})
    if neo_only and args.host != "forge2":
        sys.exit(f"webui_host: the {'/'.join(neo_only)} fixtures have one double and one single block, which only "
                 "the Forge Neo line (--host forge2) counts; Forge dfdcbab builds Flux with 19 and 38")
    host.dest.mkdir(parents=True, exist_ok=True)
    host.record.write_text(json.dumps({"host": host.kind, "source": str(Path(args.source).resolve()),
                                       "commit": args.commit or host.spec["commit"], "family": args.family},
                                      indent=4))
    began = time.monotonic()
    steps = [("webui", install_webui), ("helpers", install_helpers), ("venv", install_venv),
             ("fixtures", install_fixtures), ("links", install_links), ("extensions", install_extensions)]
    for name, step in steps:
        start = time.monotonic()
        step(host, args)
        say(f"{name}: done in {time.monotonic() - start:.0f} s")
    say(f"installed {host.kind} in {host.dest} in {time.monotonic() - began:.0f} s; "
        f"next: {sys.executable} {Path(__file__).resolve()} start --dest {host.dest}")


def answers(url):
    try:
        with urllib.request.urlopen(url + "/sdapi/v1/sd-models", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def running_pid(host, instance):
    """The recorded pid of `instance` if that process is still a WebUI launcher, else None."""
    try:
        pid = int(host.pid_file(instance).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"launch.py" in cmdline else None


def plain_flags(host):
    """The plain instance's own data dir; --disable-extra-extensions (no extension at all) unless the kit
    put extensions into that data dir's extensions/, which is all that instance then loads besides the
    built-in ones (AutoLoRA is only linked into the ext instance's)."""
    added = [folder for folder in host.extensions() if host.has_extension("plain", folder)]
    return [flag for flag in PLAIN_FLAGS if not (added and flag == "--disable-extra-extensions")]


def spawn(host, instance, extra_flags=()):
    if running_pid(host, instance) or answers(host.url(instance)):
        sys.exit(f"webui_host: {instance}: something already answers at {host.url(instance)} "
                 "(stop it first, or choose other --ports)")
    ext_flags, ext_env = extension_extras(host, instance)
    flags = FLAGS + host.spec["flags"] + (plain_flags(host) if instance == "plain" else []) + ext_flags
    flags = [*map(host.fill, flags), *extra_flags, "--port", str(host.ports[instance])]
    cmd = [str(host.python), "launch.py", *flags]
    env = {**os.environ, **ENV, **{k: host.fill(v) for k, v in {**host.spec["env"], **ext_env}.items()}}
    for path in (host.log_file(instance), host.pid_file(instance)):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(host.log_file(instance), "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        process = subprocess.Popen(cmd, cwd=host.webui, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    host.pid_file(instance).write_text(str(process.pid))
    say(f"{instance}: started pid {process.pid} on {host.url(instance)}, log {host.log_file(instance)}")
    return process


def started(host, instance):
    """Whether the instance's log has the line every host prints once its APIs are set up: an HTTP
    request before that can make A1111 fail ("Cannot add middleware after an application has started")."""
    return STARTED in host.log_file(instance).read_text(errors="replace")


def wait_ready(host, instance, process, timeout, began):
    while not (started(host, instance) and answers(host.url(instance))):
        if process.poll() is not None or time.monotonic() - began > timeout:
            tail = host.log_file(instance).read_text().splitlines()[-30:]
            sys.exit(f"webui_host: {instance} did not come up; end of {host.log_file(instance)}:\n" + "\n".join(tail))
        time.sleep(2)
    say(f"{instance}: API answers after {time.monotonic() - began:.0f} s")


def chosen(args):
    return (args.only,) if args.only else INSTANCES


def env_line(host):
    names = {"ext": "AUTOLORA_WEBUI_URL", "plain": "AUTOLORA_PLAIN_WEBUI_URL"}
    return " ".join(f"{names[i]}={host.url(i)}" for i in INSTANCES)


def start(args):
    host = Host(args.dest, ports=args.ports, fixtures=args.fixtures)
    if args.ports:  # later starts (--only one, after a stop) keep away from the host type's ports too
        record = json.loads(host.record.read_text())
        host.record.write_text(json.dumps({**record, "ports": args.ports}, indent=4))
    began, processes = time.monotonic(), {}
    try:
        for instance in chosen(args):
            processes[instance] = spawn(host, instance, args.flag)
        host.record_ports(list(processes), host.ports)
        for instance, process in processes.items():
            wait_ready(host, instance, process, args.timeout, began)
    except SystemExit:
        for instance in processes:
            stop_instance(host, instance)
        raise
    print(env_line(host))


def stop_instance(host, instance):
    pid = running_pid(host, instance)
    if pid:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(30):
            if not running_pid(host, instance):
                break
            time.sleep(1)
        else:
            os.killpg(pid, signal.SIGKILL)
        say(f"{instance}: stopped pid {pid}")
    host.pid_file(instance).unlink(missing_ok=True)
    host.record_ports([instance])


def stop(args):
    host = Host(args.dest)
    for instance in chosen(args):
        stop_instance(host, instance)


def status(args):
    host = Host(args.dest, ports=args.ports)
    record = json.loads(host.record.read_text())
    print(f"{host.kind} {record['commit'][:10]} (from {record['source']}) in {host.dest}")
    for instance in INSTANCES:
        pid, up = running_pid(host, instance), answers(host.url(instance))
        state = f"pid {pid}" if pid else "not started here"
        print(f"  {instance:5} {host.url(instance)}  {state}, API {'answers' if up else 'does not answer'}")
    for folder, entry in host.extensions().items():
        where = ", ".join(i for i in INSTANCES if host.has_extension(i, folder)) or "neither instance"
        print(f"  extension {folder} ({entry['repo']} {entry['commit'][:10]}): {where}")
    print(env_line(host))


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("install", help="check out, install and prepare a host")
    setup.set_defaults(func=install)
    setup.add_argument("--host", required=True, choices=list(HOSTS))
    setup.add_argument("--source", required=True, help="the WebUI: a bare git dir or a work tree")
    setup.add_argument("--dest", required=True, help="the folder to install into (outside this project)")
    setup.add_argument("--family", type=families, default="sd1",
                       help="model families of the fixtures, comma-separated, of sd1,sdxl,sd3,flux,chroma (default: "
                            "sd1 only, to keep the install small and quick; sdxl adds 0.2 GB (A1111) to 2 GB (Forge "
                            "types); flux (3.2 GB) and chroma (1.8 GB): --host forge2 only)")
    setup.add_argument("--commit", help="WebUI commit to check out (default: the host's pinned one)")
    setup.add_argument("--repos", action="append", default=[], help="a folder of helper git dirs")
    setup.add_argument("--repo", action="append", default=[], metavar="NAME=PATH", help="one helper's git dir")
    setup.add_argument("--python", help="the Python to make the venv with (default: pythonX.Y of the host)")
    add = commands.add_parser("extensions", help="add extensions to both instances of an installed host")
    add.set_defaults(func=extensions)
    add.add_argument("--dest", required=True)
    add.add_argument("--repos", action="append", default=[], help="a folder of git dirs (as for install)")
    for sub, required in ((setup, False), (add, True)):
        sub.add_argument("--extension", action="append", default=[], type=extension_spec, required=required,
                         metavar="NAME[=GIT_DIR][@COMMIT]",
                         help="an extension for both instances: GitHub owner/name (or the name part of a known "
                              f"one: {', '.join(k.split('/')[1] for k in EXTENSIONS)}), its git dir (default: "
                              "looked up in --repos) and commit (default: the pinned one, else HEAD); repeat for more")
    for name, func, text in (("start", start, "start the instances, wait for their APIs"),
                             ("stop", stop, "stop the instances that start started"),
                             ("status", status, "show the instances and the live suite's environment")):
        sub = commands.add_parser(name, help=text)
        sub.set_defaults(func=func)
        sub.add_argument("--dest", required=True)
    for name in ("start", "stop"):
        commands.choices[name].add_argument("--only", choices=INSTANCES, help="just this instance (default: both)")
    for name in ("start", "status"):
        commands.choices[name].add_argument(
            "--ports", type=ports, metavar="EXT,PLAIN",
            help="ports of the instance with and without the extension (default: those start recorded, "
                 "else the host type's)")
    commands.choices["start"].add_argument(
        "--flag", action="append", default=[], metavar="FLAG",
        help="a further WebUI flag for both instances, e.g. --flag=--medvram (repeat for more)")
    commands.choices["start"].add_argument(
        "--fixtures", metavar="FOLDER",
        help="the fixture folder under DIR for checkpoints, LoRAs and HF_HOME (default: fixtures; "
             "fixtures-controlnet: the ControlNet set the ControlNet extension's install made, A1111)")
    commands.choices["start"].add_argument("--timeout", type=float, default=600,
                                           help="seconds to wait for the APIs (default 600)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    args.func(args)


if __name__ == "__main__":
    main()
