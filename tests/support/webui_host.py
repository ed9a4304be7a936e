#!/usr/bin/env python3
"""Install and run a WebUI host for the live tests (tests/live), offline, on a CPU.

    python tests/support/webui_host.py install --host a1111|forge|reforge|classic|forge2 --source GIT_DIR_OR_TREE
        --dest DIR [--family sd1[,sdxl,sd3]] [--commit REV] [--repos FOLDER ...] [--repo NAME=PATH ...]
        [--python PYTHON]
    python tests/support/webui_host.py start  --dest DIR [--only ext|plain] [--ports EXT,PLAIN] [--timeout S]
        [--flag=--medvram ...]
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

start runs both instances (or --only one) detached, logs in DIR/logs, waits until each API answers
and prints the environment for the live suite, e.g.

    AUTOLORA_WEBUI_URL=http://127.0.0.1:7860 AUTOLORA_PLAIN_WEBUI_URL=http://127.0.0.1:7862

--ports EXT,PLAIN replaces the host type's ports (HOSTS) where other WebUIs already use them; start
records them in DIR/run, where status finds them while the instances run. stop ends the instances
that start recorded in DIR/run. Clones are `git clone --shared`: they borrow the source's objects, so keep
the source git dirs. Files whose objects a source lacks (large files left out of snapshots) are left
out by a sparse checkout; the hosts do not need them.

A host type is one entry in HOSTS. Standard library only: this runs before any venv exists.
"""
from __future__ import annotations

import argparse
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
FIXTURE_MAKER = PROJECT / "tests" / "support" / "make_fixtures.py"
FAMILY_NAMES = PROJECT / "tests" / "support" / "fixtures" / "names.py"  # FAMILIES; no torch there

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

    def __init__(self, dest, kind=None, ports=None):
        self.dest = Path(dest).resolve()
        self.kind = kind or json.loads(self.record.read_text())["host"]
        self.spec = HOSTS[self.kind]
        self.webui = self.dest / "webui"
        self.python = self.webui / "venv" / "bin" / "python"
        self.fixtures = self.dest / "fixtures"
        self.places = {"dest": self.dest, "fixtures": self.fixtures, "src": self.dest / "src"}
        self.ports = {**self.spec["ports"], **self.recorded_ports(), **(ports or {})}

    @property
    def record(self):
        return self.dest / "host.json"

    @property
    def ports_file(self):
        return self.dest / "run" / "ports.json"

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


def say(message):
    print(f"webui_host: {message}", flush=True)


def run(cmd, **kwargs):
    say("$ " + " ".join(map(str, cmd)))
    began = time.monotonic()
    done = subprocess.run([str(c) for c in cmd], env={**os.environ, **ENV}, **kwargs)
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


def without_torch(requirements, out, replace=None):
    """Copy a requirements file without its torch/torchvision lines (torch is pinned per host);
    a line that matches a pattern of `replace` in full becomes that pattern's value."""
    torch_line = re.compile(r"\s*(torch|torchvision)\s*([=<>!~;#\[@]|$)", re.IGNORECASE)
    lines = []
    for line in requirements.read_text().splitlines():
        if torch_line.match(line):
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


def write_config(data_dir):
    config = Path(data_dir) / "config.json"
    settings = json.loads(config.read_text()) if config.is_file() else {}
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({**settings, "live_previews_enable": False}, indent=4))


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


def install(args):
    host = Host(args.dest, args.host)
    if host.dest == PROJECT or PROJECT in host.dest.parents:
        sys.exit("webui_host: --dest must be outside this project")
    host.dest.mkdir(parents=True, exist_ok=True)
    host.record.write_text(json.dumps({"host": host.kind, "source": str(Path(args.source).resolve()),
                                       "commit": args.commit or host.spec["commit"], "family": args.family},
                                      indent=4))
    began = time.monotonic()
    steps = [("webui", install_webui), ("helpers", install_helpers), ("venv", install_venv),
             ("fixtures", install_fixtures), ("links", install_links)]
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


def spawn(host, instance, extra_flags=()):
    if running_pid(host, instance) or answers(host.url(instance)):
        sys.exit(f"webui_host: {instance}: something already answers at {host.url(instance)} "
                 "(stop it first, or choose other --ports)")
    flags = FLAGS + host.spec["flags"] + (PLAIN_FLAGS if instance == "plain" else []) + list(extra_flags)
    cmd = [str(host.python), "launch.py", *map(host.fill, flags), "--port", str(host.ports[instance])]
    env = {**os.environ, **ENV, **{k: host.fill(v) for k, v in host.spec["env"].items()}}
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
    host = Host(args.dest, ports=args.ports)
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
                       help="model families of the fixtures, comma-separated, of sd1,sdxl,sd3 (default: sd1 only, "
                            "to keep the install small and quick; sdxl adds 0.2 GB (A1111) to 2 GB (Forge types))")
    setup.add_argument("--commit", help="WebUI commit to check out (default: the host's pinned one)")
    setup.add_argument("--repos", action="append", default=[], help="a folder of helper git dirs")
    setup.add_argument("--repo", action="append", default=[], metavar="NAME=PATH", help="one helper's git dir")
    setup.add_argument("--python", help="the Python to make the venv with (default: pythonX.Y of the host)")
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
    commands.choices["start"].add_argument("--timeout", type=float, default=600,
                                           help="seconds to wait for the APIs (default 600)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    args.func(args)


if __name__ == "__main__":
    main()
