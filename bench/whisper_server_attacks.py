"""The whisper-server under the attacks of issue 21, beside an honest client: figures for
docs/engines.md and docs/operations.md.

Starts `stt-streaming whisper-server` (tiny.en, one inference slot) from this tree and, with
`--baseline PATH`, from another checkout (e.g. `git archive main | tar -x -C /tmp/base`),
one after the other, and measures on each:

- long audio: 1,496 s of speech as 8 kbit/s Opus (about 1.5 MB): the answer, its time and
  the server's peak RSS growth (VmHWM), and an honest request sent 8 s after it;
- 33 uploads trickling a byte a second: the statuses of 3 honest requests meanwhile;
- the prompt: median inference time (`X-Inference-Time-Ms`) of an 11 s clip with no prompt,
  a 1,000-character prompt (over 224 tokens) that invites a repetition loop, and 60 KB of
  the same; as ratios to no prompt, measured in the same run.

Run: `python bench/whisper_server_attacks.py [--baseline PATH]`; prints a Markdown table
and the load average. Linux only (reads /proc for peak RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import wave
from pathlib import Path

import av
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "speech" / "jfk.wav"
PATH = "/v1/audio/transcriptions"
KEY = "sk-bench-attacks"
TRICKLERS = 33
LOOPING_PROMPT = "ask not what your country can do for you " * 1500


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def long_opus(repeats: int = 136) -> bytes:
    with wave.open(str(CLIP)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    pcm = np.tile(pcm, repeats)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="ogg") as output:
        stream = output.add_stream("libopus", rate=48_000, layout="mono")
        stream.bit_rate = 8_000
        for start in range(0, pcm.size, 16_000 * 60):
            frame = av.AudioFrame.from_ndarray(
                pcm[None, start : start + 16_000 * 60].copy(), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 16_000, start
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


class Server:
    """`stt-streaming whisper-server` from `tree`, with an API key (ignored by old trees)."""

    def __init__(self, tree: Path) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "STT_LOG_LEVEL": "WARNING",
            "WHISPER_API_KEY": KEY,
            "WHISPER_SERVER_MAX_CONCURRENCY": "1",
        }
        command = [sys.executable, "-m", "stt_worker.tools.cli", "whisper-server"]
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--model", "tiny.en"]
        self.process = subprocess.Popen([*command, *args], cwd=tree, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=1) as client:
            for _ in range(1200):
                try:
                    if (await client.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    await asyncio.sleep(0.1)  # loading the model
        raise RuntimeError("the whisper-server did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


async def post(
    client: httpx.AsyncClient, data: bytes, name: str = "a.wav", **fields: str
) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.post(
        PATH,
        files={"file": (name, data)},
        data={"model": "whisper-1", **fields},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    return response, time.perf_counter() - started


async def trickle(port: int, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    )
    answer = asyncio.ensure_future(reader.read(1))
    try:
        while not stop.is_set() and not answer.done():
            writer.write(b"\0")
            await writer.drain()
            await asyncio.wait([answer], timeout=1.0)
    except ConnectionError:
        pass
    finally:
        answer.cancel()
        writer.close()


async def measure(tree: Path, long: bytes) -> dict[str, str]:
    server = Server(tree)
    figures: dict[str, str] = {}
    try:
        await server.ready()
        clip = CLIP.read_bytes()
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            alone = statistics.median([(await post(client, clip))[1] for _ in range(3)])
            baseline = peak_rss_bytes(server.process.pid)
            attack = asyncio.create_task(post(client, long, "long.ogg"))
            # By now the old server had decoded it and held the slot (decoding took 4 s).
            await asyncio.sleep(8)
            honest, honest_s = await post(client, clip)
            refused, refused_s = await attack
            grown = (peak_rss_bytes(server.process.pid) - baseline) / 2**20
            figures["1,496 s Opus: answer"] = f"{refused.status_code} in {refused_s:.2f} s"
            figures["1,496 s Opus: peak RSS growth"] = f"{grown:.0f} MiB"
            figures["honest 8 s later / alone"] = (
                f"{honest.status_code}, {honest_s / alone:.1f}x ({honest_s:.2f} s)"
            )

            stop = asyncio.Event()
            tricklers = [asyncio.create_task(trickle(server.port, stop)) for _ in range(TRICKLERS)]
            await asyncio.sleep(1)  # all connected and sending
            answers = await asyncio.gather(*(post(client, clip) for _ in range(3)))
            stop.set()
            await asyncio.gather(*tricklers, return_exceptions=True)
            figures["honest beside 33 tricklers"] = str([r.status_code for r, _ in answers])

            for name, prompt in [
                ("prompt: none", ""),
                ("prompt: 1,000 chars", LOOPING_PROMPT[-1000:]),
                ("prompt: 60 KB", LOOPING_PROMPT[:60_000]),
            ]:
                fields = {"prompt": prompt} if prompt else {}
                times = [
                    float((await post(client, clip, **fields))[0].headers["x-inference-time-ms"])
                    for _ in range(3)
                ]
                figures[name] = f"{statistics.median(times):.0f} ms"
    finally:
        server.stop()
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure first")
    args = parser.parse_args()
    long = long_opus()
    trees = {"this tree": ROOT, **({"baseline": args.baseline} if args.baseline else {})}
    load_before = os.getloadavg()[0]
    results = {name: await measure(tree, long) for name, tree in trees.items()}
    print(f"| figure | {' | '.join(results)} |")
    print(f"| --- |{' --- |' * len(results)}")
    for figure in results["this tree"]:
        print(f"| {figure} | {' | '.join(r.get(figure, '') for r in results.values())} |")
    print(f"\nload average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    asyncio.run(main())
