"""Scoring images with a vision-language model, with the paper's Appendix A prompts, behind an
OpenAI-compatible chat-completions endpoint (set AUTOLORA_VLM_API_KEY if it wants a key)."""
from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable
from typing import Any

from lib_autolora.tools.http_client import http_json

# ---------------------------------------------------------------------------- Appendix A prompts

# A.1, with the character and the film made parameters (the paper's last item says "from Frozen").
CPS_PROMPT = """Evaluate the presence of {character} from {work} in the image. Output a score between 0 and 5, where:
* 0: {character} is not present in the image.
* 1: The image contains a character with a vague resemblance to {character}, but it’s not clear if it’s her. (e.g., a character with a similar hairstyle or dress color)
* 2: The image contains a character that shares some similarities with {character}, but it’s not a clear match. (e.g., a character with a similar face shape or clothing style)
* 3: The image contains a character that is similar to {character}, but with some noticeable differences. (e.g., a character with a similar dress and hairstyle, but different facial features)
* 4: The image contains a character that is very likely to be {character}, but with some minor differences. (e.g., a character with a similar face, dress, and hairstyle, but with a slightly different expression or pose)
* 5: The image contains a character that is unmistakably {character} from {work}.
Output the score in following JSON format:
```
{{
  "score": [score between 0 and 5],
  "reason": [use keywords to describe the reason of the score, e.g., ["dress", "hairstyle", "no {character} character"]]
}}
```
Reply only with a JSON with no extra text"""

# A.2 as printed (its style scale has no 0 item), the generation prompt and the style filled in.
PC_SA_PROMPT = """Evaluate the given image for the prompt {prompt} and the {style} style
Access the following metrics:
Prompt correspondence: How well does the image capture the essence, objects, and scenes described in the prompt? Scale: 0-5, where:
0: Not at all (the image does not relate to the prompt in any way)
1: Very poorly (the image vaguely relates to the prompt, but most key elements are missing or incorrect)
2: Somewhat (the image captures some key elements of the prompt, but others are missing or incorrect)
3: Fairly well (the image captures most key elements of the prompt, but some details may be off)
4: Very well (the image accurately captures the essence and most key elements of the prompt)
5: Exactly (the image perfectly captures the essence, objects, and scenes described in the prompt)
Style adherence: How well does the image adhere to the specified style? If the style is pixel art, does the image truly resemble pixel art, or is it just a low-quality image? Scale: 0-5, where:
1: Very poorly (the image attempts to mimic pixel art, but lacks clear pixelation, has excessive aliasing, or uses too many colors)
2: Somewhat (the image shows some pixel art characteristics, such as pixelation, but lacks consistency in pixel size, color palette, or has noticeable artifacts)
3: Fairly well (the image generally adheres to pixel art principles, with clear pixelation, a limited color palette, and minimal aliasing, but may have some minor flaws)
4: Very well (the image strongly adheres to pixel art principles, with crisp pixelation, a well-chosen color palette, and minimal to no aliasing or artifacts)
5: Perfectly (the image perfectly captures the pixel art style, with precise pixelation, a masterfully chosen color palette, and no noticeable flaws or artifacts)
Provide the evaluation scores in the following JSON format:
```
{{
"prompt_correspondence": [the prompt correspondence score from 0 to 5],
"style_adherence": [the style adherence score from 0 to 5],
}}
Reply only with a JSON with no extra text
```"""

# name: (template, {JSON key in the reply: score column})
VLM_PROMPTS = {
    "cps": (CPS_PROMPT, {"score": "cps"}),
    "pc-sa": (PC_SA_PROMPT, {"prompt_correspondence": "pc", "style_adherence": "sa"}),
}
SCORE_RANGE = (0.0, 5.0)


def vlm_prompt(kind: str, prompt: str = "", character: str = "Princess Anna", work: str = "Disney’s Frozen movie",
               style: str = "pixel art") -> str:
    template, _ = VLM_PROMPTS[kind]
    return template.format(prompt=prompt, character=character, work=work, style=style)


def parse_scores(reply: str | None, keys: Iterable[str]) -> dict[str, float | None]:
    """{key: float or None} from a VLM reply that should hold a JSON object with those keys. Takes
    code fences, trailing commas, "4", [4] and prose around the JSON; a missing value or one outside
    0-5 is None."""
    found: Any = {}
    match = re.search(r"\{.*\}", reply or "", re.DOTALL)
    if match:
        try:
            found = json.loads(re.sub(r",\s*([}\]])", r"\1", match.group(0)))
        except ValueError:
            found = {}
    scores: dict[str, float | None] = {}
    for key in keys:
        value: Any = found.get(key) if isinstance(found, dict) else None
        if value is None:  # not parsed as JSON: look for "key": 4 / [4] / "4" in the text
            hit = re.search(rf'"?{re.escape(key)}"?\s*:\s*\[?\s*"?(-?\d+(?:\.\d+)?)', reply or "")
            value = hit.group(1) if hit else None
        if isinstance(value, list):
            value = value[0] if value else None
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = None
        scores[key] = value if value is not None and SCORE_RANGE[0] <= value <= SCORE_RANGE[1] else None
    return scores


class VlmScorer:
    """Scores one image with an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, url: str, model: str, kind: str, timeout: float = 300, **prompt_fields: str) -> None:
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model, self.kind, self.timeout, self.prompt_fields = model, kind, timeout, prompt_fields
        self.keys = VLM_PROMPTS[kind][1]
        key = os.environ.get("AUTOLORA_VLM_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def request(self, png: bytes, prompt: str) -> dict[str, Any]:
        data_url = "data:image/png;base64," + base64.b64encode(png).decode()
        text = vlm_prompt(self.kind, prompt=prompt, **self.prompt_fields)
        return {"model": self.model, "temperature": 0, "max_tokens": 300,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                                          {"type": "text", "text": text}]}]}

    def __call__(self, png: bytes, prompt: str) -> tuple[dict[str, float | None], str]:
        """({score column: value or None}, the reply text)."""
        response = http_json(self.url, self.request(png, prompt), self.timeout, self.headers)
        content = response["choices"][0]["message"]["content"]
        if isinstance(content, list):  # content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        scores = parse_scores(content, list(self.keys))
        return {column: scores[key] for key, column in self.keys.items()}, content
