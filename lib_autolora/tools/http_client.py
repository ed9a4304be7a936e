"""JSON over HTTP with the standard library, for the WebUI's API and a VLM endpoint."""
import json
import urllib.error
import urllib.request


class HttpError(Exception):
    def __init__(self, url, status, body):
        super().__init__(f"{url}: HTTP {status}: {body[:500]}")
        self.status, self.body = status, body


def http_json(url, payload=None, timeout=600, headers=None):
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
