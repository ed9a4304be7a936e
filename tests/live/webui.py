"""A small client for a running WebUI's HTTP API (A1111 or Forge), for the live tests."""
import base64
import io
import json

import numpy as np
from PIL import Image

from lib_autolora.tools.http_client import HttpError as ApiError  # noqa: F401 (what the live tests catch)
from lib_autolora.tools.http_client import http_json


class WebUI:
    def __init__(self, url, timeout=600):
        self.url, self.timeout = url.rstrip("/"), timeout

    def call(self, path, payload=None):
        return http_json(self.url + path, payload, self.timeout)

    def txt2img(self, payload):
        if payload.get("hr_upscaler") == "Latent":
            payload = {**payload, "hr_upscaler": self.latent_upscaler()}
        return Result(self.call("/sdapi/v1/txt2img", payload))

    def latent_upscaler(self):
        """The host's plain latent hires upscaler: "Latent" (ersatzForge has only "Latent (antialiased)")."""
        if not hasattr(self, "_latent"):
            modes = [mode["name"] for mode in self.call("/sdapi/v1/latent-upscale-modes")]
            self._latent = "Latent" if "Latent" in modes else next(m for m in modes if m.startswith("Latent"))
        return self._latent

    def img2img(self, payload):
        return Result(self.call("/sdapi/v1/img2img", payload))


class Result:
    def __init__(self, response):
        self.response = response
        self.png = [base64.b64decode(image) for image in response["images"]]
        self.info = json.loads(response["info"])

    @property
    def pixels(self):
        return [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in self.png]

    @property
    def infotexts(self):
        return self.info["infotexts"]


def png_base64(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def max_difference(a, b):
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a.pixels, b.pixels))
