"""A small client for a running WebUI's HTTP API (A1111 or Forge), standard library only."""
import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
from PIL import Image


class ApiError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class WebUI:
    def __init__(self, url, timeout=600):
        self.url, self.timeout = url.rstrip("/"), timeout

    def call(self, path, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, error.read().decode(errors="replace")) from None

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
