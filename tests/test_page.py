"""The gateway's page in real headless Chromium, a speech clip as its microphone.

Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser download) plays the
clip through its fake capture device into the page's AudioWorklet, which streams 16 kHz PCM16
to the gateway, the real worker transcribes it, and the page's captions must match the clip.
The screenshot and the captions are left in test-artifacts/ (page.png, page.json).
"""

from __future__ import annotations

import json
import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from stt_worker.runtime.publisher import read_wav
from tests.helpers import REPO, SPEECH_DIR, manifest_text
from tests.test_worker import WER_BOUND
from tests.textnorm import wer

CHROMIUM = Path("/usr/bin/chromium")
CLIP = "conv_2utt_1p5s.wav"  # two utterances, 1.5 s apart; 10.3 s
ARTIFACTS = REPO / "test-artifacts"
# Chromium's fake capture device runs at 48 kHz; a file at that rate needs no conversion.
CAPTURE_RATE_HZ = 48_000

if not CHROMIUM.exists() and not os.environ.get("STT_REQUIRE_BROWSER"):
    pytest.skip(
        f"no {CHROMIUM} (apt-get install chromium); `./dev test` as root installs it and then "
        "sets STT_REQUIRE_BROWSER=1, so CI never skips this",
        allow_module_level=True,
    )


def capture_file(directory: Path) -> Path:
    """The clip at 48 kHz with silence around it: the page connects the microphone a moment
    after capture starts, and the last words need silence after them to end the utterance."""
    samples, rate = read_wav(SPEECH_DIR / CLIP)
    audio = soxr.resample(samples[:, 0].astype(np.float32) / 32768, rate, CAPTURE_RATE_HZ)
    pad = np.zeros(CAPTURE_RATE_HZ, dtype=np.float32)
    audio = np.concatenate([pad, audio, pad, pad])
    path = directory / "microphone.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(CAPTURE_RATE_HZ)
        wav.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


async def test_page_captions_a_spoken_clip(worker, make_gateway, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    gateway = await make_gateway()
    microphone = capture_file(tmp_path)
    expected = manifest_text(CLIP)
    began = time.monotonic()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                # %noloop: play the file once, then silence (it loops by default).
                f"--use-file-for-fake-audio-capture={microphone}%noloop",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 640})
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            await page.goto(gateway.http_url + "/")
            await page.get_by_role("button", name="Start microphone").click()
            await page.get_by_text("Listening. Speak now.").wait_for(timeout=20_000)

            finals = page.locator("#finals li.final")

            async def spoken() -> str:
                return " ".join(await finals.locator(".text").all_inner_texts())

            # The assistant "starts talking" after the first utterance: the second one is a
            # barge-in, which the page marks.
            await finals.first.wait_for(timeout=30_000)
            await page.get_by_role("switch", name="Assistant is speaking").check()
            await page.locator("#finals li.interrupt").wait_for(timeout=15_000)
            deadline = time.monotonic() + 40
            while wer(expected, await spoken()) > WER_BOUND and time.monotonic() < deadline:
                await page.wait_for_timeout(250)
            await page.get_by_role("button", name="Stop microphone").click()
            await page.get_by_text("Microphone off").wait_for(timeout=20_000)

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
            text = await spoken()
            shown = await finals.count()
            latencies = [
                float(value)
                for value in await finals.evaluate_all(
                    "items => items.map(item => item.dataset.latencyS).filter(Boolean)"
                )
            ]
        finally:
            await browser.close()
    elapsed_s = time.monotonic() - began
    (ARTIFACTS / "page.json").write_text(
        json.dumps(
            {"clip": CLIP, "text": text, "latencies_s": latencies, "test_s": elapsed_s}, indent=2
        )
    )
    assert wer(expected, text) <= WER_BOUND, (text, console)
    # Every final shows its end-of-speech -> final latency, and it is a plausible one.
    assert len(latencies) == shown, latencies
    assert all(0 < value < 10 for value in latencies), latencies
