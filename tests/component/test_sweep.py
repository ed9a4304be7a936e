"""Tier 1: the sweep tool against a stub WebUI and a stub VLM endpoint, both http.server threads on
127.0.0.1 with a free port; requests are recorded and checked."""
import base64
import contextlib
import csv
import hashlib
import io
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from lib_autolora.core.params import AutoLoraParams
from lib_autolora.tools import metrics, sweep, vlm

LORA = "stub_lora"


@contextlib.contextmanager
def serve(respond):
    """Runs `respond(method, path, body) -> (status, reply object)` on 127.0.0.1; yields (url, requests)."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self, method):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            requests.append((method, self.path, body))
            status, reply = respond(method, self.path, body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.handle_one("GET")

        def do_POST(self):
            self.handle_one("POST")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def stub_image(payload):
    """16x16 PNG. Plain LoRA (gamma 1) draws the same image for every seed (diversity 0); AutoLoRA a
    seeded random one. Pixel (0, 0)'s red value carries the score the stub VLM will give: seed % 6."""
    gamma = payload["alwayson_scripts"]["autolora"]["args"][1]
    key = payload["prompt"] if gamma == 1 else f"{payload['prompt']}|{payload['seed']}|{gamma}"
    rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixels[0, 0, 0] = 40 * (payload["seed"] % 6) + 5
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def stub_webui(method, path, body):
    if method == "GET" and path == "/sdapi/v1/loras":
        return 200, [{"name": LORA, "alias": LORA}, {"name": "other"}]
    if method == "POST" and path == "/sdapi/v1/txt2img":
        args = body["alwayson_scripts"]["autolora"]["args"]
        infotext = (f"{body['prompt']}\nSteps: {body['steps']}, Seed: {body['seed']}, "
                    f"AutoLoRA: True, AutoLoRA gamma: {args[1]}")
        return 200, {"images": [base64.b64encode(stub_image(body)).decode()], "parameters": body,
                     "info": json.dumps({"infotexts": [infotext], "seed": body["seed"]})}
    return 404, {"detail": "Not Found"}


def stub_vlm(method, path, body):
    if path != "/v1/chat/completions":
        return 404, {"error": "not found"}
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    score = int(pixels[0, 0, 0]) // 40
    # as a model might answer the paper's template: a code fence, a list value, a trailing comma
    content = f'```json\n{{\n  "score": [{score}],\n  "reason": ["dress", "hairstyle"],\n}}\n```'
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


GRID = ["--gammas", "1,1.5", "--lora-weights", "0.4,0.8", "--w1", "0,5", "--seeds", "1-3"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    progress = io.StringIO()
    with serve(stub_webui) as (url, webui_requests), serve(stub_vlm) as (vlm_url, vlm_requests):
        image_rows, cell_rows = sweep.main(
            ["--url", url, "--prompt", "Anna", "--lora", LORA, *GRID, "--cfg", "6", "--steps", "4", "--width", "64",
             "--height", "64", "--out", str(out), "--features", "pixels", "--vlm-url", vlm_url + "/v1",
             "--vlm-model", "stub-vision", "--timeout", "20", "--no-plot"], progress_stream=progress)
    return dict(out=out, webui=webui_requests, vlm=vlm_requests, progress=progress.getvalue(),
                images=read_csv(out / "images.csv"), cells=read_csv(out / "cells.csv"))


def test_txt2img_requests_carry_the_lora_tag_and_autolora_args(swept):
    posts = [body for method, path, body in swept["webui"] if path == "/sdapi/v1/txt2img"]
    assert swept["webui"][0][:2] == ("GET", "/sdapi/v1/loras")  # the LoRA is checked first
    assert len(posts) == 2 * 2 * 2 * 3
    seen = set()
    for body in posts:
        prompt, tag = body["prompt"].split(" <lora:")
        assert prompt == "Anna"
        name, weight = tag.rstrip(">").split(":")
        assert name == LORA
        args = body["alwayson_scripts"]["autolora"]["args"]
        params = AutoLoraParams.from_args(args)
        assert args == AutoLoraParams(enabled=True, gamma=params.gamma, base_cfg=params.base_cfg).to_args()
        assert params.lora_cfg is None and (params.start, params.end) == (0.0, 1.0)
        assert (body["cfg_scale"], body["steps"], body["width"], body["height"]) == (6, 4, 64, 64)
        seen.add((float(weight), params.gamma, params.base_cfg, body["seed"]))
    assert seen == {(w, g, w1, s) for w in (0.4, 0.8) for g in (1.0, 1.5) for w1 in (None, 5.0) for s in (1, 2, 3)}


def test_one_csv_row_per_image_with_its_settings(swept):
    rows, out = swept["images"], swept["out"]
    assert len(rows) == 24
    posts = [body for method, path, body in swept["webui"] if path == "/sdapi/v1/txt2img"]
    for row, body in zip(rows, posts):  # in request order
        assert (float(row["lora_weight"]), float(row["gamma"]), int(row["seed"])) == (
            float(body["prompt"].rsplit(":", 1)[1].rstrip(">")), body["alwayson_scripts"]["autolora"]["args"][1],
            body["seed"])
        assert row["w1"] == ("" if body["alwayson_scripts"]["autolora"]["args"][2] == 0 else "5.0")
        assert row["cell"] == sweep.cell_name(float(row["lora_weight"]), float(row["gamma"]), float(row["w1"] or 0), 0)
        assert row["file"] == f"images/{row['cell']}/seed{row['seed']}.png"
        assert (out / row["file"]).read_bytes() == stub_image(body)  # the image the WebUI sent, unchanged
        assert f"AutoLoRA gamma: {body['alwayson_scripts']['autolora']['args'][1]}" in row["infotext"]
        assert (row["prompt"], row["lora"], row["cfg_scale"], row["steps"]) == ("Anna", LORA, "6.0", "4")


def test_diversity_per_cell(swept):
    cells, out = swept["cells"], swept["out"]
    assert len(cells) == 8 and {c["features"] for c in cells} == {"pixels"}
    for cell in cells:
        files = sorted((out / "images" / cell["cell"]).glob("*.png"))
        assert len(files) == int(cell["images"]) == 3
        expected = metrics.diversity(metrics.pixel_features(metrics.load_images(files)))
        assert float(cell["diversity"]) == pytest.approx(expected, abs=1e-4)
        if float(cell["gamma"]) == 1:
            assert float(cell["diversity"]) < 0.01  # the stub's plain LoRA: one image but for its score pixel
        else:
            assert float(cell["diversity"]) > 0.5


def test_vlm_gets_the_paper_prompt_and_the_image_and_its_scores_are_parsed(swept):
    assert len(swept["vlm"]) == 24
    for (method, path, body), row in zip(swept["vlm"], swept["images"]):
        assert (method, path, body["model"]) == ("POST", "/v1/chat/completions", "stub-vision")
        image_part, text_part = body["messages"][0]["content"]
        png = (swept["out"] / row["file"]).read_bytes()
        assert image_part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(png).decode()
        assert text_part["text"].startswith(
            "Evaluate the presence of Princess Anna from Disney’s Frozen movie in the image.")
        assert "Reply only with a JSON with no extra text" in text_part["text"]
        assert float(row["cps"]) == int(row["seed"]) % 6  # what the stub read from the image
    for cell in swept["cells"]:
        scores = [float(r["cps"]) for r in swept["images"] if r["cell"] == cell["cell"]]
        assert float(cell["cps"]) == pytest.approx(np.mean(scores), abs=1e-4)
        assert float(cell["div_cps"]) == pytest.approx(float(cell["diversity"]) * np.mean(scores), abs=2e-4)
        assert cell["scored_cps"] == "3"


def test_progress_bar_counts_to_the_end(swept):
    lines = swept["progress"].strip().splitlines()
    assert len(lines) == 24 and lines[0].startswith("[") and " 1/24 " in lines[0]
    assert " 24/24 " in lines[-1] and "#" * 28 in lines[-1]


@pytest.mark.parametrize("reply, keys, expected", [
    ('{"score": 4, "reason": ["dress"]}', ["score"], {"score": 4.0}),
    ('Sure!\n```json\n{"score": [3.5],\n "reason": ["hair"],\n}\n```', ["score"], {"score": 3.5}),
    ('{"score": "2"}', ["score"], {"score": 2.0}),
    ('{"prompt_correspondence": [4], "style_adherence": [5],}', ["prompt_correspondence", "style_adherence"],
     {"prompt_correspondence": 4.0, "style_adherence": 5.0}),
    ('"score": 5 (unmistakably her)', ["score"], {"score": 5.0}),  # no JSON object: the key is still found
    ('{"score": 7}', ["score"], {"score": None}),  # outside 0-5
    ("I cannot tell.", ["score"], {"score": None}),
    ('{"score": [score between 0 and 5]}', ["score"], {"score": None}),
])
def test_parse_scores(reply, keys, expected):
    assert vlm.parse_scores(reply, keys) == expected


def test_vlm_prompts_are_appendix_a():
    cps = vlm.vlm_prompt("cps")
    assert "* 5: The image contains a character that is unmistakably Princess Anna" in cps
    assert '"score": [score between 0 and 5]' in cps
    pc_sa = vlm.vlm_prompt("pc-sa", prompt="a mermaid on a throne, pixel art style")
    assert pc_sa.startswith(
        "Evaluate the given image for the prompt a mermaid on a throne, pixel art style and the pixel art style")
    assert '"style_adherence": [the style adherence score from 0 to 5]' in pc_sa
    assert '{\n  "score"' in cps and "{character}" not in cps  # literal braces kept, fields filled
    elsa = vlm.vlm_prompt("cps", character="Elsa", work="Frozen")
    assert elsa.startswith("Evaluate the presence of Elsa from Frozen")


def test_bad_settings_fail_before_any_request(tmp_path):
    with serve(stub_webui) as (url, requests):
        with pytest.raises(SystemExit, match="gamma must be a number from 0 to 10"):
            sweep.main(["--url", url, "--prompt", "x", "--lora", LORA, "--gammas", "1,11", "--out", str(tmp_path)])
        with pytest.raises(SystemExit, match="no LoRA named 'missing'"):
            sweep.main(["--url", url, "--prompt", "x", "--lora", "missing", "--out", str(tmp_path)])
    assert [path for _, path, _ in requests] == ["/sdapi/v1/loras"]


def test_a_webui_error_names_the_cell(tmp_path):
    def broken(method, path, body):
        if path == "/sdapi/v1/loras":
            return 200, [{"name": LORA}]
        return 422, {"detail": "always on script autolora not found"}
    with serve(broken) as (url, _):
        with pytest.raises(SystemExit, match=r"lw0.8_g1.5_w1-cfg_w2-cfg seed 1: .*HTTP 422.*extension installed"):
            sweep.main(["--url", url, "--prompt", "x", "--lora", LORA, "--gammas", "1.5", "--seeds", "1",
                        "--out", str(tmp_path), "--features", "pixels", "--timeout", "20"],
                       progress_stream=io.StringIO())


def test_plot_without_matplotlib_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    cells = [{"cell": "a", "lora_weight": 0.8, "gamma": 1.0, "w1": "", "w2": "", "diversity": 0.2}]
    message = sweep.plot_table(cells, [], str(tmp_path / "table.png"))
    assert "matplotlib is not installed" in message and "cells.csv" in message
    assert not (tmp_path / "table.png").exists()


def test_plot_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    cells = [{"cell": f"c{w}{g}", "lora_weight": w, "gamma": g, "w1": "", "w2": "", "diversity": 0.2 + w,
              "cps": 3.0, "div_cps": 0.6} for w in (0.4, 0.8) for g in (1.0, 1.5)]
    assert sweep.plot_table(cells, ["cps"], str(tmp_path / "table.png")).startswith("wrote")
    assert (tmp_path / "table.png").stat().st_size > 0


def test_lists_and_ranges():
    assert sweep.parse_list("1,1.5, 2") == [1.0, 1.5, 2.0]
    assert sweep.parse_list("1-4,9", int) == [1, 2, 3, 4, 9]
    assert sweep.cell_name(0.8, 1.5, 0, 5) == "lw0.8_g1.5_w1-cfg_w2-5"
