"""The pause set: whole sentences with one mid-sentence pause inserted at a real word gap.

Sentences come from ../shared/speech: LibriSpeech speaker 1089 (male), LJ Speech (female;
`long_lj_LJ001-0001_to_0005.wav` split into its five utterances at its 0.35 s silences) and
the noisy LJ clip (`jfk.wav` is left out: its one sentence pauses 0.66-1.18 s between
its clauses, longer than any rule holds, and the conversational clips repeat these
sentences). `--extra lj` adds `bench.lj_extra`'s 24 further LJ Speech utterances
(LJ001-0009..0032, bench/data/lj_extra/, speaker "female, LJ extra"): their text is
whisper-base's (silver), and whether each ends a sentence is its manifest's
`ends_sentence`. Without `--extra` the set, its clip names and its halves are as before; with
it, the shared sentences' room tone and halves stay the same too (`recording`,
`bench.pause_halves`). A word gap is a boundary between two of Whisper's word timestamps
(tiny.en, offline, cached) where the audio really falls quiet: a run of 10 ms frames below
`speech_marks`' speech level within `SEARCH_S` of the boundary, holding the quietest frame
there, at most `MAX_GAP_MS` long; every such gap of a sentence is used. The pause fills the
gap up to 250, 400, 700, 1000 or 1500 ms of
silence from the end of the word before to the start of the next, with room tone from the
same recording (its quietest stretch, looped with short crossfades, never digital zero).
Every sentence also appears with no inserted pause: its own pauses must never end the turn.
After its last word each clip carries `TAIL_S` of room tone, so a rule can end the turn.

    .venv/bin/python -m bench.pauses                  # -> .cache/pauses/manifest.jsonl
    .venv/bin/python -m bench.lj_extra                # once: the extra clips (committed)
    .venv/bin/python -m bench.pauses --extra lj       # the set with them
    STT_ENDPOINT_MODE=adaptive .venv/bin/stt-streaming eval .cache/pauses/manifest.jsonl \\
        --speed 1 --out bench/results/pauses-adaptive

It prints, per speaker, the sentences, how many end a sentence and the usable word gaps.
A clip whose sentence comes back as more than one final was cut at its pause.
`bench.endpointing` scores endpoint rules on the same set without a worker (`--extra lj`
there too).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench import lj_extra
from bench.speech_marks import FRAME_S, frame_db, loud_frames, speech_span
from stt_worker.runtime.publisher import read_wav

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "speech"
OUT = ROOT / ".cache" / "pauses"
RATE = 16_000
PAUSES_MS = (250, 400, 700, 1000, 1500)
WHOLE = (
    ("ls_1089-134686-0000.wav", "male"),
    ("ls_1089-134686-0001.wav", "male"),
    ("ls_1089-134686-0002.wav", "male"),
    ("ls_1089-134691-0000.wav", "male"),
    ("ls_1089-134691-0001.wav", "male"),
    ("lj_LJ001-0006.wav", "female"),
    ("lj_LJ001-0008.wav", "female"),
    ("noisy10db_lj_LJ001-0004.wav", "female, pink noise 10 dB"),
)
EXTRAS = ("lj",)  # opt-in sources: `bench.lj_extra`'s 24 LJ Speech utterances
EXTRA_LJ_SPEAKER = "female, LJ extra"
LONG = "long_lj_LJ001-0001_to_0005.wav"
# How the long clip's text starts each of its five utterances (LJ001-0001..0005).
LONG_STARTS = ("Printing", "in being", "For although", "produced the", "the invention")
SPLIT_MIN_S = 0.3  # the long clip's joins: runs of digital zero at least this long
SEARCH_S = 0.15  # Whisper's word times are coarse: look this far around a boundary
MIN_GAP_MS = 30  # a quiet run shorter than this is not a gap between words
MAX_GAP_MS = 240  # longer: already a pause of its own, no room to insert 250 ms
TONE_S = 0.1  # the room tone's source: the quietest stretch this long
TONE_SPREAD_DB = 6.0  # a clip's own tone this much louder than its recording's: borrow
FADE_S = 0.01  # crossfade where room tone is joined
LEAD_S = 0.3  # room tone before the first word, at least (some clips start on it)
TAIL_S = 2.0  # room tone after the last word
WORDS_MODEL = "tiny.en"


@dataclass(frozen=True)
class Sentence:
    name: str
    speaker: str
    text: str
    samples: np.ndarray  # int16, ending TAIL_S after the last word
    tone: np.ndarray  # the recording's quietest stretch
    ends_sentence: bool | None = None  # what a source's manifest says; None: read the text

    @property
    def complete(self) -> bool:
        """Whether the text ends a sentence: LJ utterances may stop mid-sentence (their
        text is punctuated); LibriSpeech's (upper case, unpunctuated) are sentences. The
        extra LJ clips' manifest says (`bench.lj_extra`: the same test on silver text, which
        a person may have corrected)."""
        if self.ends_sentence is not None:
            return self.ends_sentence
        return ends_a_sentence(self.text)

    @property
    def speech_end_s(self) -> float:
        return speech_span(self.samples, RATE).end_s


def ends_a_sentence(text: str) -> bool:
    """A reference text that ends a sentence: LibriSpeech's (upper case, unpunctuated) are
    whole sentences; a punctuated one must end with a full stop, question or exclamation."""
    return text.isupper() or text.rstrip().endswith((".", "?", "!"))


@dataclass(frozen=True)
class Gap:
    at: int  # sample where room tone is inserted: the gap's quietest frame
    start_s: float  # end of the word before (energy)
    end_s: float  # start of the word after (energy)
    word: str  # the word before the gap

    @property
    def ms(self) -> int:
        return round((self.end_s - self.start_s) * 1000)


@dataclass(frozen=True)
class PauseClip:
    sentence: Sentence
    gap: Gap | None  # None: the sentence as spoken, no pause inserted
    pause_ms: int  # silence from the word before to the word after; 0 with no gap
    samples: np.ndarray

    @property
    def name(self) -> str:
        if self.gap is None:
            return f"{self.sentence.name}.whole"
        word = re.sub(r"\W", "", self.gap.word)
        return f"{self.sentence.name}.{word}-{self.gap.start_s:.2f}s.p{self.pause_ms}"

    @property
    def pause_start_s(self) -> float:
        return self.gap.start_s if self.gap else self.speech_end_s

    @property
    def resume_s(self) -> float | None:
        """Where speech starts again after the inserted pause."""
        return self.gap.start_s + self.pause_ms / 1000 if self.gap else None

    @property
    def speech_end_s(self) -> float:
        """End of the last word: the sentence's, shifted by the room tone inserted."""
        shift = (self.pause_ms - self.gap.ms) / 1000 if self.gap else 0.0
        return self.sentence.speech_end_s + shift


def room_tone(samples: np.ndarray) -> np.ndarray:
    """The recording's `TONE_S` stretch whose loudest 10 ms frame is quietest, with no
    digital zero."""
    db = frame_db(samples, RATE)
    span = round(TONE_S / FRAME_S)
    windows = np.lib.stride_tricks.sliding_window_view(db, span)
    loudest = np.where(windows.min(axis=1) > -80, windows.max(axis=1), np.inf)
    best = int(np.argmin(loudest))
    size = round(FRAME_S * RATE)
    return samples[best * size : (best + span) * size].copy()


def loudest_db(tone: np.ndarray) -> float:
    return float(frame_db(tone, RATE).max())


def splice(head: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """`head` then `tail`, overlapped by a `FADE_S` linear crossfade."""
    n = min(round(FADE_S * RATE), head.size, tail.size)
    ramp = np.linspace(0.0, 1.0, n, endpoint=False)
    mixed = head[head.size - n :] * (1 - ramp) + tail[:n] * ramp
    joined = [head[: head.size - n], mixed, tail[n:]]
    return np.concatenate(joined).astype(np.float64)


def fill(tone: np.ndarray, samples: int) -> np.ndarray:
    """Room tone `samples` long: `tone` looped with crossfades."""
    out = tone.astype(np.float64)
    while out.size < samples:
        out = splice(out, tone.astype(np.float64))
    return out[:samples]


def insert(samples: np.ndarray, at: int, tone: np.ndarray, length: int) -> np.ndarray:
    """`length` samples of room tone inserted at `at`, crossfaded at both joins."""
    fade = round(FADE_S * RATE)
    filler = fill(tone, length + 2 * fade)
    joined = splice(splice(samples[:at].astype(np.float64), filler), samples[at:])
    return np.clip(np.rint(joined), -32768, 32767).astype(np.int16)


def with_tail(samples: np.ndarray, tone: np.ndarray) -> np.ndarray:
    """The recording cut at its last word, then `TAIL_S` of room tone."""
    end = round(speech_span(samples, RATE).end_s * RATE)
    return insert(samples[:end], end, tone, round(TAIL_S * RATE))


class Spoken(NamedTuple):
    """A sentence as its source has it, before room tone is added."""

    name: str
    speaker: str
    text: str
    samples: np.ndarray
    ends_sentence: bool | None = None


def sentences(names: tuple[str, ...] | None = None, extra: Sequence[str] = ()) -> list[Sentence]:
    """The sentences (the shared speech's, then each `EXTRAS` source asked for), each with
    room tone: its own quietest stretch, or the quietest of its recording's other clips where
    its own is `TONE_SPREAD_DB` louder than that."""
    spoken = shared_spoken()
    if "lj" in extra:
        spoken += lj_extra_spoken()
    tones = [room_tone(s.samples) for s in spoken]
    quietest: dict[str, np.ndarray] = {}
    for s, tone in zip(spoken, tones, strict=True):
        known = quietest.get(recording(s.name))
        if known is None or loudest_db(tone) < loudest_db(known):
            quietest[recording(s.name)] = tone
    found = []
    for s, tone in zip(spoken, tones, strict=True):
        floor = quietest[recording(s.name)]
        if loudest_db(tone) > loudest_db(floor) + TONE_SPREAD_DB:
            tone = floor  # only the fading end of a word: the clip was trimmed to its words
        lead = max(0.0, LEAD_S - speech_span(s.samples, RATE).start_s)
        samples = insert(s.samples, 0, tone, round(lead * RATE))
        tail = with_tail(samples, tone)
        found.append(Sentence(s.name, s.speaker, s.text, tail, tone, s.ends_sentence))
    return [s for s in found if names is None or s.name in names]


def shared_spoken() -> list[Spoken]:
    """The sentences of ../shared/speech: `WHOLE`, then the long LJ clip's five."""
    texts = {
        entry["file"]: entry["text"]
        for entry in map(json.loads, (SPEECH / "manifest.jsonl").read_text().splitlines())
    }
    spoken = [
        Spoken(file.removesuffix(".wav"), who, texts[file], read_wav(SPEECH / file)[0].ravel())
        for file, who in WHOLE
    ]
    return spoken + long_parts(texts[LONG])


def lj_extra_spoken(directory: Path = lj_extra.OUT) -> list[Spoken]:
    """`bench.lj_extra`'s clips, with their silver text and its `ends_sentence` flag. Their
    names (`ljx_...`) make them a recording of their own: the shared clips' room tone and
    halves do not change when they are added."""
    return [
        Spoken(
            clip.name,
            EXTRA_LJ_SPEAKER,
            clip.text,
            read_wav(directory / clip.file)[0].ravel(),
            clip.ends_sentence,
        )
        for clip in lj_extra.load(directory)
    ]


def long_parts(text: str) -> list[Spoken]:
    """The long LJ clip's five utterances, split at its joins of digital zero (dropped)."""
    samples = read_wav(SPEECH / LONG)[0].reshape(-1)
    zero = np.concatenate([[False], samples == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    joins = [
        (a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= SPLIT_MIN_S * RATE
    ]
    cuts = [0, *((a + b) // 2 for a, b in joins), samples.size]
    starts = [text.index(start) for start in LONG_STARTS] + [len(text)]
    assert len(cuts) == len(starts), f"{LONG}: {len(cuts) - 1} parts"
    parts = []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        nonzero = np.flatnonzero(samples[a:b])
        part = samples[a + nonzero[0] : a + nonzero[-1] + 1]
        words = text[starts[i] : starts[i + 1]].strip()
        parts.append(Spoken(f"lj_LJ001-000{i + 1}", "female", words, part))
    return parts


def recording(name: str) -> str:
    """The recording a clip was cut from: LibriSpeech chapter, LJ Speech, the noisy LJ, or
    the extra LJ clips (`ljx_`: a source of their own, though the same reader)."""
    return name.rsplit("-", 1)[0]


def word_times(
    sentence: Sentence, cache: Path = OUT / "words.json"
) -> list[tuple[float, float, str]]:
    """Whisper's (start, end, word) for the sentence: `WORDS_MODEL`, offline, cached."""
    key = f"{WORDS_MODEL}:{hashlib.sha1(sentence.samples.tobytes()).hexdigest()}"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in known:
        known[key] = [list(w) for w in _transcribe_words(sentence.samples)]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known))
    return [(float(a), float(b), str(w)) for a, b, w in known[key]]


def _transcribe_words(samples: np.ndarray) -> list[tuple[float, float, str]]:
    from faster_whisper import WhisperModel

    from stt_worker.engines.models import resolve_model_path

    model = WhisperModel(str(resolve_model_path(WORDS_MODEL)), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(
        samples.astype(np.float32) / 32768, language="en", beam_size=1, word_timestamps=True
    )
    return [(w.start, w.end, w.word.strip()) for s in segments for w in s.words or ()]


def word_gaps(sentence: Sentence) -> list[Gap]:
    """Boundaries between words where the audio falls quiet, in order."""
    loud = loud_frames(sentence.samples, RATE)
    db = frame_db(sentence.samples, RATE)
    words = word_times(sentence)
    gaps: dict[int, Gap] = {}
    for (_, end, word), (start, _, _) in itertools.pairwise(words):
        low = max(0, round((end - SEARCH_S) / FRAME_S))
        high = min(db.size, round((start + SEARCH_S) / FRAME_S))
        gap = _quiet_run(loud, db, low, high)
        if gap is not None:
            a, b, quietest = gap
            size = round(FRAME_S * RATE)
            gaps.setdefault(a, Gap(quietest * size + size // 2, a * FRAME_S, b * FRAME_S, word))
    fitting = [g for g in gaps.values() if MIN_GAP_MS <= g.ms <= MAX_GAP_MS]
    return sorted(fitting, key=lambda g: g.start_s)


def _quiet_run(
    loud: np.ndarray, db: np.ndarray, low: int, high: int
) -> tuple[int, int, int] | None:
    """The run of quiet frames holding the quietest frame in [low, high): (start, end,
    quietest), or None when that frame is not quiet or its run touches the window's edge
    (speech before or after it was not found: not a gap between two words)."""
    if high <= low:
        return None
    quietest = low + int(np.argmin(db[low:high]))
    if loud[quietest]:
        return None
    a = quietest
    while a > 0 and not loud[a - 1]:
        a -= 1
    b = quietest + 1
    while b < loud.size and not loud[b]:
        b += 1
    if a == 0 or b == loud.size:
        return None
    return a, b, quietest


def clips(sentence: Sentence, pauses_ms: tuple[int, ...] = PAUSES_MS) -> list[PauseClip]:
    """The sentence as spoken, then each of its gaps filled to each pause length."""
    made = [PauseClip(sentence, None, 0, sentence.samples)]
    for gap in word_gaps(sentence):
        for pause_ms in pauses_ms:
            extra = round((pause_ms - gap.ms) * RATE / 1000)
            samples = insert(sentence.samples, gap.at, sentence.tone, extra)
            made.append(PauseClip(sentence, gap, pause_ms, samples))
    return made


def pause_set(
    names: tuple[str, ...] | None = None,
    pauses_ms: tuple[int, ...] = PAUSES_MS,
    extra: Sequence[str] = (),
) -> list[PauseClip]:
    return [clip for sentence in sentences(names, extra) for clip in clips(sentence, pauses_ms)]


def build(out: Path = OUT, extra: Sequence[str] = ()) -> Path:
    """Every clip as a WAV, and a manifest for `stt-streaming eval`."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for clip in pause_set(extra=extra):
        path = out / f"{clip.name}.wav"
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(RATE)
            wav.writeframes(clip.samples.astype("<i2").tobytes())
        entry = {"file": path.name, "text": clip.sentence.text, "pause_ms": clip.pause_ms}
        lines.append(json.dumps(entry | {"pause_s": clip.pause_start_s}))
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def summary(extra: Sequence[str] = ()) -> str:
    """Sentences, sentence ends and usable word gaps per speaker (word times are cached)."""
    rows = [
        "| speaker | sentences | ending a sentence | word gaps |",
        "| --- | ---: | ---: | ---: |",
    ]
    found = sentences(extra=extra)
    for who in dict.fromkeys(s.speaker for s in found):
        mine = [s for s in found if s.speaker == who]
        gaps = sum(len(word_gaps(s)) for s in mine)
        rows.append(f"| {who} | {len(mine)} | {sum(s.complete for s in mine)} | {gaps} |")
    return "\n".join(rows)


def extra_option(parser: argparse.ArgumentParser) -> None:
    """`--extra SOURCE`, repeatable: the opt-in sources to add to the shared speech."""
    parser.add_argument(
        "--extra",
        action="append",
        choices=EXTRAS,
        default=[],
        help="add a source: lj = the 24 LJ Speech clips of bench.lj_extra (bench/data/lj_extra)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    extra_option(parser)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the clips")
    args = parser.parse_args()
    try:
        manifest = build(args.out, args.extra)
    except FileNotFoundError as exc:
        raise SystemExit(f"bench.pauses: {exc}") from exc
    print(summary(args.extra))
    print(manifest)


if __name__ == "__main__":
    main()
