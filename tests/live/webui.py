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
        return Result(self.call("/sdapi/v1/txt2img", payload))

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
