"""JSON over HTTP with the standard library, for the WebUI's API and a VLM endpoint."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class HttpError(Exception):
    def __init__(self, url: str, status: int | str, body: str) -> None:
        super().__init__(f"{url}: HTTP {status}: {body[:500]}")
        self.status, self.body = status, body


def http_json(url: str, payload: Any = None, timeout: float = 600, headers: dict[str, str] | None = None) -> Any:
    """GET (payload None) or POST JSON; the decoded JSON reply."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise HttpError(url, error.code, error.read().decode(errors="replace")) from None
    except urllib.error.URLError as error:
        raise HttpError(url, "unreachable", str(error.reason)) from None
