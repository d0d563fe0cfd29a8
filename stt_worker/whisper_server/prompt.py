"""The `prompt` bound: a request's prompt is cut, from the left, to what Whisper can read.

Whisper conditions on at most half its 448-token context, 224 tokens (223 after the
`<|startofprev|>` marker), and keeps the *last* ones: the most recent context is what
helps. OpenAI's API does the same with a longer prompt, so we truncate rather than refuse.
The server has no tokenizer (the engine owns it), so it cuts in characters, generously: the
last `PROMPT_MAX_CHARS` characters hold more than 224 tokens of any ordinary text (English
runs about 4-5 characters a token, CJK under 2), and the engine then keeps the last 223
tokens of that, exactly as Whisper does. What a prompt can cost is then the cost of 224
tokens, however much was sent.
"""

from __future__ import annotations

PROMPT_MAX_TOKENS = 224
# Eight characters a token: more than ordinary text needs, so the cut loses nothing the
# engine's own 223-token cut would have kept.
PROMPT_MAX_CHARS = PROMPT_MAX_TOKENS * 8


def bounded_prompt(prompt: str | None) -> str | None:
    """The tail of `prompt` the engine is given; None when there is nothing to say."""
    if prompt is None:
        return None
    tail = prompt[-PROMPT_MAX_CHARS:]
    if len(tail) < len(prompt):
        # Start at a word, so the model is not prompted with half of one.
        _, space, rest = tail.partition(" ")
        tail = rest if space and rest.strip() else tail
    return tail.strip() or None
