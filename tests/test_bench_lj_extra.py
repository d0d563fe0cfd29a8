"""The extra LJ Speech clips of the pause set (`bench.lj_extra`, `bench.pauses --extra lj`):
their conversion, their committed manifest, and how the pause set and its halves take them.
No model is loaded: the transcripts are the committed ones.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

from bench import lj_extra, pauses
from bench.pause_halves import HELD_OUT, TUNE, halves
from stt_worker.runtime.publisher import read_wav

SHARED_LJ = pauses.SPEECH / "lj_LJ001-0008.wav"


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """int16 samples shaped (frames, channels) as a WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(samples.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def test_conversion_downmixes_and_resamples_to_16k() -> None:
    rate = 22_050
    t = np.arange(rate) / rate  # 1 s of a 440 Hz tone, the same in both channels
    tone = np.rint(8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    samples = lj_extra.to_16k_mono(wav_bytes(np.stack([tone, tone], axis=1), rate))
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert abs(samples.size - lj_extra.RATE) <= 1
    middle = samples[2000:-2000].astype(np.float64)  # away from the filter's edges
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(8000 / np.sqrt(2), rel=0.01)


def test_a_missing_mirror_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(lj_extra.MirrorMissingError, match="--mirror"):
        lj_extra.mirror_commit(tmp_path / "no-such-mirror")


def test_the_manifest_round_trips_and_a_missing_one_says_how_to_build_it(tmp_path: Path) -> None:
    clip = lj_extra.Clip("ljx_X.wav", "Not done yet.", 1.5, "repo:path @ abc", False, True, None)
    lj_extra.write_manifest(tmp_path, [clip])
    assert lj_extra.load(tmp_path) == [clip]
    with pytest.raises(FileNotFoundError, match=r"python -m bench\.lj_extra"):
        lj_extra.load(tmp_path / "empty")


def test_the_committed_clips_match_their_manifest() -> None:
    clips = lj_extra.load()
    assert [c.name for c in clips] == [f"ljx_{u}" for u in lj_extra.UTTERANCES]
    commit = (lj_extra.OUT / "SOURCE_COMMIT").read_text().split()[1]
    for clip in clips:
        samples, rate = read_wav(lj_extra.OUT / clip.file)
        assert (rate, samples.shape[1]) == (lj_extra.RATE, 1)
        assert clip.seconds == round(samples.shape[0] / rate, 3)
        assert clip.source.endswith(f"/{clip.name.removeprefix('ljx_')}.wav @ {commit}")
        assert clip.text and clip.text_source == lj_extra.TEXT_SOURCE
        # A sentence end by both readings of the silver text, or none.
        both = clip.ends_sentence_alone and clip.ends_sentence_in_context
        assert clip.ends_sentence is bool(both)


@pytest.mark.skipif(
    not (lj_extra.DEFAULT_MIRROR.exists() and SHARED_LJ.exists()), reason="no mirror here"
)
def test_conversion_matches_the_shared_copy_of_the_same_utterance() -> None:
    # The shared speech converted LJ001-0008 with another resampler: not the same samples,
    # but the same length and waveform.
    commit = lj_extra.mirror_commit(lj_extra.DEFAULT_MIRROR)
    ours = lj_extra.utterance_audio(lj_extra.DEFAULT_MIRROR, commit, "LJ001-0008")
    shared = read_wav(SHARED_LJ)[0].reshape(-1)
    assert abs(ours.size - shared.size) <= 1
    n = min(ours.size, shared.size)
    assert np.corrcoef(ours[:n], shared[:n])[0, 1] > 0.99


def test_a_manifest_flag_decides_whether_a_sentence_ends() -> None:
    silence = np.zeros(160, np.int16)
    said = pauses.Sentence(
        "ljx_LJ001-0016", "female, LJ extra", "natural therefore.", silence, silence
    )
    assert said.complete  # read from the text, as for the shared LJ clips
    corrected = pauses.Sentence(
        "ljx_LJ001-0016", "female, LJ extra", "natural therefore.", silence, silence, False
    )
    assert not corrected.complete
    assert pauses.recording("ljx_LJ001-0016") != pauses.recording("lj_LJ001-0006")


def test_extra_sentences_are_dealt_after_the_shared_ones_and_split_their_ends() -> None:
    shared_gaps = {"ls_a-0000": 17, "ls_a-0001": 2, "lj_LJ001-0004": 3, "lj_LJ001-0008": 1}
    shared_complete = {"ls_a-0000": True, "ls_a-0001": True, "lj_LJ001-0004": False}
    shared_complete["lj_LJ001-0008"] = True
    before = halves(shared_gaps, shared_complete)
    extra_gaps = {f"ljx_LJ001-{n:04d}": n % 4 for n in range(9, 19)}
    extra_complete = {name: n % 3 != 0 for n, name in enumerate(extra_gaps)}
    after = halves(shared_gaps | extra_gaps, shared_complete | extra_complete)
    assert {name: after[name] for name in before} == before
    ends = {
        h: sum(extra_complete[n] for n in extra_gaps if after[n] == h) for h in (HELD_OUT, TUNE)
    }
    assert abs(ends[HELD_OUT] - ends[TUNE]) <= 1
    assert {after[name] for name in extra_gaps} == {HELD_OUT, TUNE}
