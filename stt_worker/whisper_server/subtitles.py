"""The `srt` and `vtt` response formats: a transcript's segments as numbered subtitle cues.

One cue per segment, as OpenAI's API writes them. SubRip numbers its cues from 1 and writes
`HH:MM:SS,mmm`; WebVTT starts with a `WEBVTT` line and writes `HH:MM:SS.mmm`. A blank line
ends every cue. Cue text may not hold a blank line (it would end the cue early) nor, in
WebVTT, the `-->` arrow; both are flattened to spaces.
"""

from __future__ import annotations

from stt_worker.engines.base import Segment, Transcript


def srt(transcript: Transcript) -> str:
    return "".join(
        f"{number}\n{_cue_times(segment, ',')}\n{_cue_text(segment)}\n\n"
        for number, segment in enumerate(_cues(transcript), start=1)
    )


def vtt(transcript: Transcript) -> str:
    cues = "".join(
        f"{_cue_times(segment, '.')}\n{_cue_text(segment)}\n\n" for segment in _cues(transcript)
    )
    return f"WEBVTT\n\n{cues}"


def _cues(transcript: Transcript) -> list[Segment]:
    return [segment for segment in transcript.segments if segment.text.strip()]


def _cue_times(segment: Segment, decimal_mark: str) -> str:
    start = _timestamp(segment.start_s, decimal_mark)
    end = _timestamp(max(segment.end_s, segment.start_s), decimal_mark)
    return f"{start} --> {end}"


def _timestamp(seconds: float, decimal_mark: str) -> str:
    total_ms = max(0, round(seconds * 1000))
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    whole_s, ms = divmod(rest_ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole_s:02d}{decimal_mark}{ms:03d}"


def _cue_text(segment: Segment) -> str:
    return " ".join(segment.text.replace("-->", "->").split())
