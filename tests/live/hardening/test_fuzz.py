"""Live: a property-based fuzzer (hypothesis) of malformed `alwayson_scripts` payloads, by position
and by name, of `args` that is no list, and of infotext pasted back through the API's `infotext` field.
Every request must be answered (no hang, the server stays up) as the README promises
(tests/support/api_oracle.py): accepted with the settings the infotext then records, or rejected with
an HTTP error whose message names one of the wrong keys. At the end the next generations still equal the
fresh-start ones."""
import collections
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.live.hardening.conftest import OFF, assert_fresh, record, state
from tests.live.webui import ApiError, Result, WebUI
from tests.support import junk
from tests.support.api_oracle import DEFAULTS, INFOTEXT, KEYS, expect_args, expect_infotext
from tests.unit.test_params_fuzz import names_a_key

REQUEST = {**OFF, "steps": 2}  # a LoRA prompt; 2 steps keep 300 requests short
INFOTEXT_BASE = (f"{REQUEST['prompt']}\nNegative prompt: {REQUEST['negative_prompt']}\nSteps: 2, Sampler: Euler a, "
                 f"CFG scale: 7.0, Seed: 1234, Size: 64x64")
ANSWERS = collections.Counter()  # (class of input, answer) -> requests
EXAMPLES = {"args": 330, "infotext": 100}
TIMEOUT = 120  # seconds; longer is a hang


def send(webui, payload):
    """(status, body or Result): the reply to a txt2img request."""
    try:
        return 200, Result(webui.call("/sdapi/v1/txt2img", payload))
    except ApiError as error:
        assert error.status != "unreachable", f"the server stopped answering: {error}"
        return error.status, error.body


def message(body):
    """AutoLoRA's message in an error reply's JSON."""
    try:
        values = json.loads(body).values()
    except (ValueError, AttributeError):
        return body
    return next((v for v in values if isinstance(v, str) and v.startswith("AutoLoRA:")), body)


def infotext_settings(text):
    """AutoLoRA's entries of an image's infotext."""
    return {key: value for key, value in (part.split(": ", 1) for part in text.split("\n")[-1].split(", ")
                                          if ": " in part) if key in INFOTEXT}


def beyond_64_bits(value):
    """Whether the request holds an integer the WebUI cannot echo in its reply (it answers with the
    request's parameters, encoded by orjson)."""
    if isinstance(value, dict):
        return any(beyond_64_bits(v) for v in value.values())
    if isinstance(value, list):
        return any(beyond_64_bits(v) for v in value)
    return isinstance(value, int) and not -2 ** 63 <= value < 2 ** 64


def check(kind, answer, status, reply, request=None):
    if answer.accepted and beyond_64_bits(request):
        assert status == 500 and "Integer exceeds 64-bit range" in reply, (status, message(reply)[:300])
        ANSWERS[(kind, "accepted, then the WebUI fails its reply (integer beyond 64 bits)")] += 1
        return
    if not answer.accepted:
        assert status == 500, f"{kind}: expected a rejection naming {sorted(answer.bad_keys)}, got {status}"
        assert names_a_key(message(reply), answer.bad_keys), (message(reply)[:300], sorted(answer.bad_keys))
        ANSWERS[(kind, "rejected naming the key")] += 1
        return
    assert status == 200, f"{kind}: the README accepts this, the server answered {status}: {message(reply)[:300]}"
    recorded = infotext_settings(reply.infotexts[0])
    if not answer.enabled:
        assert not recorded, f"{kind}: AutoLoRA is off here, yet the infotext says {recorded}"
        ANSWERS[(kind, "accepted, AutoLoRA off (defaults)")] += 1
        return
    assert recorded == expected_infotext(answer.settings), f"{kind}: the infotext records {recorded}"
    ANSWERS[(kind, "accepted, AutoLoRA on")] += 1


def expected_infotext(settings):
    """As the README says: AutoLoRA: True and every value that differs from its default (the hires
    values when the hires pass has its own), as their text."""
    wanted = {"AutoLoRA": "True"}
    for key, name in list(INFOTEXT.items())[1:]:
        if settings[name] != DEFAULTS[name] and (settings["hires"] == "own" or not name.startswith("hires_")):
            wanted[key] = str(settings[name])
    return wanted


def check_not_a_list(value, status, reply):
    """`args` that is no list, read by the WebUI's own code as the README says: a string as a list of
    its characters, an empty object as no values; anything else fails the request in the WebUI."""
    if isinstance(value, str) or value == {}:
        return check("args not a list (string, {})", expect_args(list(value), positions=len(KEYS)), status, reply,
                     value)
    assert status in (422, 500), f"args={value!r} must be refused by the WebUI, got {status}"
    ANSWERS[("args not a list", f"refused by the WebUI (HTTP {status})")] += 1


@settings(max_examples=EXAMPLES["args"], deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(drawn=st.one_of(junk.args, junk.not_a_list))
def test_malformed_arguments_are_answered_as_the_readme_says(armed, fresh, drawn):
    kind, args = drawn
    status, reply = send(WebUI(armed.url, TIMEOUT), {**REQUEST, "alwayson_scripts": {"autolora": {"args": args}}})
    if kind == "args not a list":
        check_not_a_list(args, status, reply)
    else:
        check(kind, expect_args(args, positions=len(KEYS)), status, reply, args)


@pytest.fixture(scope="module")
def infotext_requests(armed, fresh):
    """Whether the host itself answers a request with an `infotext` field (Forge dfdcbab's and Forge
    Neo's API fail on every one, AutoLoRA or not: a TypeError in their paste-field code)."""
    try:
        armed.txt2img({"infotext": INFOTEXT_BASE})
    except ApiError as error:
        pytest.skip(f"this host's API fails on `infotext` requests without AutoLoRA too: {str(error)[:200]}")


@settings(max_examples=EXAMPLES["infotext"], deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(drawn=junk.infotext_entries())
def test_pasted_infotext_is_answered_as_the_readme_says(armed, fresh, infotext_requests, drawn):
    kind, entries = drawn
    text = ", ".join([INFOTEXT_BASE] + [f"{key}: {value}" for key, value in entries.items()])
    status, reply = send(WebUI(armed.url, TIMEOUT), {"infotext": text})
    check(kind, expect_infotext(entries), status, reply)


def test_after_the_fuzzing_the_server_is_as_fresh(armed, fresh):
    by_class = collections.defaultdict(dict)
    for (kind, answer), n in sorted(ANSWERS.items()):
        by_class[kind][answer] = n
    record("fuzzing", requests=sum(ANSWERS.values()), by_class=dict(by_class),
           generations_begun=state(armed)["counts"].get("generations begun"))
    assert sum(n for (kind, _), n in ANSWERS.items() if kind != "infotext") >= 300
    assert_fresh(armed, fresh)
