"""The client half of the Ray Serve test: run inside the test's network namespace (beside the
server), it drives the server with the `openai` client and prints what it saw as JSON."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
from typing import Any

import httpx
import openai

from tests.cognitive.serving.reference import greedy_text
from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.model_source import ModelSource

KEY = os.environ.get("TRIFECTA_TEST_API_KEY", "")  # the admin key the test made


def wait_until_up(base: str, timeout_s: float = 150) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            headers = {"Authorization": f"Bearer {KEY}"}
            if httpx.get(f"{base}/v1/models", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not come up")


def greedy(prompt: str, max_new_tokens: int) -> str:
    """What the replicas' model (the shipped small tier) says alone."""
    model, tokenizer = ModelSource(kind="tier", tier="small").load()
    codec = TokenCodec(tokenizer)
    return greedy_text(model, codec, prompt, max_new_tokens)


def main(base: str) -> dict[str, Any]:
    wait_until_up(base)
    api = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)
    seen: dict[str, Any] = {"models": [m.id for m in api.models.list().data]}

    raw = api.completions.with_raw_response.create(
        model="small", prompt="t=41,p=17;p?", max_tokens=8, temperature=0, logprobs=2
    )
    completion = raw.parse()
    seen["text"] = completion.choices[0].text
    seen["expected"] = greedy("t=41,p=17;p?", 8)
    seen["top_logprobs"] = [len(top) for top in completion.choices[0].logprobs.top_logprobs]  # type: ignore[union-attr]
    seen["cost"] = completion.usage.model_extra["cost"]  # type: ignore[union-attr,index]

    stream = api.chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": "t=41,p=17;p?"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    seen["streamed"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    walked = api.completions.create(
        model="small",
        prompt="1+1?",
        max_tokens=50,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    seen["first_chunk"] = next(iter(walked)).choices[0].text
    walked.close()

    # Autoscaling on ongoing requests: keep the tier busy until a second replica serves.
    def one(i: int) -> str:
        raw = api.completions.with_raw_response.create(
            model="small", prompt=f"{i}+{i}?", max_tokens=40, temperature=0
        )
        return raw.headers["X-Trifecta-Replica"]

    served_by: set[str] = set()
    deadline = time.monotonic() + 90
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        while len(served_by) < 2 and time.monotonic() < deadline:
            served_by |= set(pool.map(one, range(48)))
    seen["scaled_replicas"] = sorted(served_by)
    # Prefix affinity, now that two replicas serve: prompts sharing a long prefix, sent one
    # after the other, each go to the replica that saw their prefix first.
    homes = []
    for prefix in ("t=41,p=17,r=63,s=5,u=8;", "a=11,b=22,c=33,d=44,e=5;", "x=9,y=8,z=7,w=65,v=43;"):
        replicas = set()
        for tail in "tprsu":
            raw = api.completions.with_raw_response.create(
                model="small", prompt=f"{prefix}{tail}?", max_tokens=2, temperature=0
            )
            replicas.add(raw.headers["X-Trifecta-Replica"])
        homes.append(sorted(replicas))
    seen["affinity_homes"] = homes
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
