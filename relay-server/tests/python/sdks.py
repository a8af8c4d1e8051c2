"""The official anthropic and openai SDKs, unchanged, against the relay (run by sdks.rs)."""
import os

import anthropic
import openai

BASE = os.environ["RELAY_BASE"]
KEY = os.environ["RELAY_KEY"]
LIMITED = os.environ["RELAY_LIMITED_KEY"]
REPLY = os.environ["RELAY_REPLY"]
MSGS = [{"role": "user", "content": "Hello"}]

a = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
m = a.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSGS)
assert m.content[0].text == REPLY, m
assert m.usage.output_tokens == 12, m.usage
with a.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=MSGS) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
assert text == REPLY, text
assert final.usage.output_tokens == 12, final.usage
assert a.messages.count_tokens(model="claude-sonnet-4-5", messages=MSGS).input_tokens > 0
assert any(x.id == "claude-sonnet-4-5" for x in a.models.list())
try:
    anthropic.Anthropic(base_url=BASE, api_key="rk_live_" + "A" * 43, max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=MSGS)
    raise SystemExit("expected anthropic.AuthenticationError")
except anthropic.AuthenticationError:
    pass

o = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
r = o.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
assert r.choices[0].message.content == REPLY, r
assert r.usage.completion_tokens == 12, r.usage
chunks = list(o.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == REPLY, text
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12, chunks[-1]
resp = o.responses.create(model="gpt-4o", input="Hi")
assert resp.output_text == REPLY, resp
events = list(o.responses.create(model="gpt-4o", input="Hi", stream=True))
assert events[-1].type == "response.completed", events[-1]
assert events[-1].response.usage.output_tokens == 12
assert any(x.id == "gpt-4o" for x in o.models.list())

lim = openai.OpenAI(base_url=BASE + "/v1", api_key=LIMITED, max_retries=0)
lim.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
try:
    lim.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    raise SystemExit("expected openai.RateLimitError")
except openai.RateLimitError:
    pass
print("python sdks ok")
