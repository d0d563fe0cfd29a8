"""More LJ Speech sentences for the pause set (`bench.pauses --extra lj`): LJ001-0009..0032.

The shared speech has LJ Speech's first eight utterances (LJ001-0001..0008) with their
reference text. coqui-ai/TTS's test data has LJ Speech 1.1 clips up to LJ001-0032, but
transcripts only for those eight. This script takes the 24 others from a git mirror of that
repository, resamples each to 16 kHz mono PCM16 (soxr, the worker's own resampler) and
transcribes it with the bundled multilingual base model (faster-whisper, English, beam 5,
no VAD filter). That text is silver, not a human reference, and the manifest says so
(`text_source`).

`ends_sentence_alone` is whether that transcript ends with `.`, `!` or `?`, the test the
pause set applies to LJ's punctuated reference text. Decoded alone, a clip nearly always gets
a full stop, so that flag overcounts; `ends_sentence_in_context` is the same test on the
clip's last word when the next utterance follows it (null for the last clip: the mirror has
no LJ001-0033). The pause set reads `ends_sentence`, both flags true: a sentence end counted
in the latency figures must be one by either reading (a doubtful clip still serves for
cut-offs), and a person who checks a clip corrects it there. `--calibrate` scores the
flags against the eight reference transcripts.

    .venv/bin/python -m bench.lj_extra              # -> bench/data/lj_extra/, mirror at
                                                    #    $LJ_MIRROR or DEFAULT_MIRROR
    .venv/bin/python -m bench.lj_extra --mirror /path/to/TTS.git --out /tmp/lj
    .venv/bin/python -m bench.lj_extra --calibrate  # LJ001-0001..0008 against metadata.csv
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import wave
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "data" / "lj_extra"
MIRROR_ENV = "LJ_MIRROR"
DEFAULT_MIRROR = Path("/work/.mirror/coqui-ai+TTS/repo")
REPO = "coqui-ai/TTS"
# The snapshot the shared speech's LJ clips came from too; --commit HEAD takes the mirror's.
COMMIT = "dbf1a08a0d4e47fdad6172e433eeb34bc6b13b4e"
WAVS = "tests/data/ljspeech/wavs"
METADATA = "tests/data/ljspeech/metadata.csv"
UTTERANCES = tuple(f"LJ001-{n:04d}" for n in range(9, 33))
REFERENCED = tuple(f"LJ001-{n:04d}" for n in range(1, 10))  # 0001..0008, and 0009 follows
# The file prefix is the pause set's speaker key (`bench.pause_halves.speaker`): not "lj",
# so these never share room tone or a dealing turn with the shared LJ clips.
PREFIX = "ljx_"
RATE = 16_000
MODEL = "base"
TEXT_SOURCE = "whisper-base (silver, not a human reference)"
LICENCE = "public domain"
SENTENCE_ENDS = (".", "!", "?")
JOIN_S = 0.7  # silence between a clip and the next for the in-context check


class MirrorMissingError(RuntimeError):
    """The coqui-ai/TTS mirror, or a file in it, is not where we were told to look."""


@dataclass(frozen=True)
class Clip:
    """One line of the manifest."""

    file: str
    text: str
    seconds: float
    source: str
    ends_sentence: bool  # what the pause set reads: both flags below
    ends_sentence_alone: bool
    ends_sentence_in_context: bool | None
    text_source: str = TEXT_SOURCE
    licence: str = LICENCE

    @property
    def name(self) -> str:
        return self.file.removesuffix(".wav")


def ends_sentence(text: str) -> bool:
    return text.rstrip().endswith(SENTENCE_ENDS)


def mirror_commit(mirror: Path, commit: str = COMMIT) -> str:
    """`commit`'s full hash in the mirror; `MirrorMissingError` if there is no mirror or it
    lacks the commit."""
    done = subprocess.run(
        ["git", "-C", str(mirror), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise MirrorMissingError(
            f"no git mirror of {REPO} holding commit {commit} at {mirror} "
            f"({done.stderr.strip() or 'no such commit'}); pass --mirror or set {MIRROR_ENV} "
            f"to a clone of https://github.com/{REPO}"
        )
    return done.stdout.strip()


def mirror_file(mirror: Path, commit: str, path: str) -> bytes:
    done = subprocess.run(
        ["git", "-C", str(mirror), "show", f"{commit}:{path}"], capture_output=True
    )
    if done.returncode != 0:
        raise MirrorMissingError(f"the {REPO} mirror at {mirror} has no {path} at {commit}")
    return done.stdout


def to_16k_mono(data: bytes) -> np.ndarray:
    """A PCM16 WAV file's samples, downmixed and resampled to `RATE`, as int16."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{8 * wav.getsampwidth()}-bit WAV; LJ Speech is 16-bit")
        channels, rate = wav.getnchannels(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).astype(np.float64)
    resampled = soxr.resample(samples.mean(axis=1), rate, RATE, quality="VHQ")
    return np.clip(np.rint(resampled), -32768, 32767).astype(np.int16)


def utterance_audio(mirror: Path, commit: str, utterance: str) -> np.ndarray:
    return to_16k_mono(mirror_file(mirror, commit, f"{WAVS}/{utterance}.wav"))


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(samples.astype("<i2").tobytes())


class Transcriber:
    """The bundled base model, run as the silver text needs: English, beam 5, no VAD filter
    (it could drop a quiet word end)."""

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from stt_worker.engines.models import resolve_model_path

        path = resolve_model_path(MODEL)
        self._model = WhisperModel(str(path), device="cpu", compute_type="int8")

    def _segments(self, samples: np.ndarray, word_timestamps: bool) -> list:
        segments, _ = self._model.transcribe(
            samples.astype(np.float32) / 32768,
            language="en",
            beam_size=5,
            vad_filter=False,
            word_timestamps=word_timestamps,
        )
        return list(segments)  # `transcribe` is lazy: the decode runs here

    def text(self, samples: np.ndarray) -> str:
        return " ".join(s.text.strip() for s in self._segments(samples, False)).strip()

    def ends_in_context(self, samples: np.ndarray, following: np.ndarray) -> bool:
        """Whether the last word before the join carries `SENTENCE_ENDS` punctuation when the
        next utterance follows after `JOIN_S` of silence: with the words that come next, the
        model punctuates by the text, not by the audio stopping."""
        join = np.zeros(round(JOIN_S * RATE), np.int16)
        segments = self._segments(np.concatenate([samples, join, following]), True)
        # Word times are coarse at a join: the next clip's first word can start in it.
        end_s = samples.size / RATE
        before = [w.word for s in segments for w in s.words or () if w.start < end_s]
        return bool(before) and ends_sentence(before[-1])


def build(mirror: Path, out: Path = OUT, commit: str = COMMIT) -> list[Clip]:
    """Every utterance's 16 kHz WAV in `out`, with `manifest.jsonl` and `SOURCE_COMMIT`."""
    commit = mirror_commit(mirror, commit)
    audio = {u: utterance_audio(mirror, commit, u) for u in UTTERANCES}
    model = Transcriber()
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for utterance, following in itertools.zip_longest(UTTERANCES, UTTERANCES[1:]):
        samples = audio[utterance]
        file = f"{PREFIX}{utterance}.wav"
        write_wav(out / file, samples)
        text = model.text(samples)
        in_context = None if following is None else model.ends_in_context(samples, audio[following])
        source = f"{REPO}:{WAVS}/{utterance}.wav @ {commit}"
        seconds = round(samples.size / RATE, 3)
        alone = ends_sentence(text)
        ends = alone and bool(in_context)
        made.append(Clip(file, text, seconds, source, ends, alone, in_context))
    write_manifest(out, made)
    (out / "SOURCE_COMMIT").write_text(f"{REPO} {commit}\n")
    return made


def calibrate(mirror: Path, commit: str = COMMIT) -> str:
    """Both silver flags against the reference text of LJ001-0001..0008, as a table."""
    commit = mirror_commit(mirror, commit)
    metadata = mirror_file(mirror, commit, METADATA).decode()
    reference = dict(line.split("|")[:2] for line in metadata.splitlines() if line)
    audio = {u: utterance_audio(mirror, commit, u) for u in REFERENCED}
    model = Transcriber()
    rows = ["| utterance | reference ends | alone | in context |", "| --- | --- | --- | --- |"]
    agree = [0, 0]
    for utterance, following in itertools.pairwise(REFERENCED):
        truth = ends_sentence(reference[utterance])
        alone = ends_sentence(model.text(audio[utterance]))
        in_context = model.ends_in_context(audio[utterance], audio[following])
        agree = [agree[0] + (alone == truth), agree[1] + (in_context == truth)]
        rows.append(f"| {utterance} | {truth} | {alone} | {in_context} |")
    total = len(REFERENCED) - 1
    rows.append(f"| agree | | {agree[0]}/{total} | {agree[1]}/{total} |")
    return "\n".join(rows)


def write_manifest(out: Path, clips: Iterable[Clip]) -> Path:
    manifest = out / "manifest.jsonl"
    lines = [json.dumps(asdict(clip), ensure_ascii=False) for clip in clips]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def load(directory: Path = OUT) -> list[Clip]:
    """The manifest's clips; `FileNotFoundError` saying how to build them if there is none."""
    manifest = directory / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} is missing; build it: python -m bench.lj_extra")
    return [Clip(**json.loads(line)) for line in manifest.read_text().splitlines() if line]


def table(clips: Iterable[Clip]) -> str:
    rows = [
        "| clip | seconds | ends_sentence | alone | in context | text (last 40 chars) |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    rows += [
        f"| {c.name} | {c.seconds:.2f} | {c.ends_sentence} | {c.ends_sentence_alone} "
        f"| {c.ends_sentence_in_context} | {c.text[-40:]} |"
        for c in clips
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mirror",
        type=Path,
        default=Path(os.environ.get(MIRROR_ENV, DEFAULT_MIRROR)),
        help=f"git dir of a {REPO} mirror (default: ${MIRROR_ENV}, else {DEFAULT_MIRROR})",
    )
    parser.add_argument("--commit", default=COMMIT, help="the mirror's commit to read")
    parser.add_argument("--out", type=Path, default=OUT, help="where the clips go")
    parser.add_argument(
        "--calibrate", action="store_true", help="score the flags on LJ001-0001..0008 instead"
    )
    args = parser.parse_args()
    try:
        if args.calibrate:
            print(calibrate(args.mirror, args.commit))
            return
        clips = build(args.mirror, args.out, args.commit)
    except MirrorMissingError as exc:
        raise SystemExit(f"bench.lj_extra: {exc}") from exc
    print(table(clips))
    ends = sum(c.ends_sentence for c in clips)
    alone = sum(c.ends_sentence_alone for c in clips)
    in_context = sum(bool(c.ends_sentence_in_context) for c in clips)
    print(
        f"{len(clips)} clips, {ends} ending a sentence ({alone} alone, {in_context} in context) "
        f"-> {args.out / 'manifest.jsonl'}"
    )


if __name__ == "__main__":
    main()
