"""Run by the WebUI's launcher at every start. Installs nothing (AutoLoRA needs nothing beyond the
WebUI); checks that this WebUI has what AutoLoRA's adapter for it uses, and if not says in one line
what is missing, instead of AutoLoRA failing later inside a generation."""
import os
import sys


def webui_root():
    """The launcher puts the WebUI's folder first on PYTHONPATH; the current folder otherwise."""
    for folder in os.environ.get("PYTHONPATH", "").split(os.pathsep) + [os.getcwd()]:
        if folder and os.path.isfile(os.path.join(folder, "modules", "scripts.py")):
            return folder
    return None


def check(root):
    """The line to print, or None when this WebUI has everything."""
    if root is None:
        return "AutoLoRA: cannot find the WebUI's folder (modules/scripts.py); AutoLoRA may not work here."
    sys.path.insert(0, root)  # where the family's marker modules are found
    from lib_autolora import hosts
    family = hosts.family()
    lacking = hosts.missing(root, family)
    if not lacking:
        return None
    needs = "; ".join(f"{provider} ({path})" for path, provider in lacking)
    return f"AutoLoRA: this WebUI ({family} family) lacks what AutoLoRA uses: {needs}. AutoLoRA will not work here."


if __name__ == "__main__":
    message = check(webui_root())
    if message:
        print(message)
