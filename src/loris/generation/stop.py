"""Stop strings: a decode-time check on the tail of each unfinished sequence."""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    """Decodes only the last few tokens of a sequence, so each check costs O(stop length), not O(text).

    A stop string spans at most ``max(len(stop))`` characters; every token decodes to at least one
    character except special/empty ones, so a tail of that many tokens plus a margin contains any
    stop string that the newest token completed.
    """

    def __init__(self, tokenizer, stops: Sequence[str]):
        if stops and tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode the generated tokens")
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.window = max((len(s) for s in self.stops), default=0) + 4

    def __bool__(self) -> bool:
        return bool(self.stops)

    def hit(self, tokens: list[int]) -> bool:
        """True when the text of ``tokens`` ends in a stop string that its last token completed."""
        tail = self.tokenizer.decode(tokens[-self.window :], skip_special_tokens=False)
        if len(tokens) > 1:
            before = self.tokenizer.decode(tokens[-self.window : -1], skip_special_tokens=False)
        else:
            before = ""
        return any(s in tail and s not in before for s in self.stops)


def cut_at_stop(text: str, stops: Sequence[str], include: bool = False) -> tuple[str, str | None]:
    """The text up to the earliest stop string (kept when ``include``), and which string it was."""
    best, which = len(text), None
    for s in stops:
        i = text.find(s) if s else -1
        if i != -1 and i < best:
            best, which = i, s
    if which is None:
        return text, None
    return text[: best + (len(which) if include else 0)], which
