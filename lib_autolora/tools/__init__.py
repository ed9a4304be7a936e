"""The paper's tools, usable without a WebUI: the toy demo, the diversity metric, the API sweep."""
