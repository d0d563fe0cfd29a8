"""A session's prompt: its own words (hotwords, names), then its recent finals. No I/O.

Whisper reads the prompt as the text said just before the audio, so recent finals keep
names and spellings consistent from one utterance to the next.
"""

from __future__ import annotations


class PromptContext:
    """The last `chars` characters of published finals (whole words), after `own`."""

    def __init__(self, own: str | None, chars: int) -> None:
        self._own = own
        self._chars = chars
        self._recent = ""

    def remember(self, text: str) -> None:
        """A published final."""
        if self._chars and text:
            # Whole words from the end, so the prompt never starts mid-word.
            recent = f"{self._recent} {text}".strip()
            while len(recent) > self._chars and " " in recent:
                recent = recent.split(" ", 1)[1]
            self._recent = recent[-self._chars :]

    @property
    def prompt(self) -> str | None:
        return " ".join(part for part in (self._own, self._recent) if part) or None
