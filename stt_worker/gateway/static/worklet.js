// AudioWorklet processor: microphone audio (the context's rate, usually 48 kHz) to 16 kHz
// mono PCM16, posted to the page in 20 ms frames. Resampling happens here because Firefox
// cannot connect a microphone to an AudioContext running at another rate than the device's.

const TAPS = 63; // odd: the low-pass filter's delay is a whole number of samples

// Windowed-sinc low-pass at 0.45 x the output rate, so that what would alias is removed.
function lowPass(ratio) {
  const taps = new Float32Array(TAPS);
  if (ratio <= 1) {
    taps[(TAPS - 1) / 2] = 1;
    return taps;
  }
  const cutoff = 0.45 / ratio; // cycles per input sample
  const middle = (TAPS - 1) / 2;
  let sum = 0;
  for (let n = 0; n < TAPS; n++) {
    const x = n - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const hamming = 0.54 - 0.46 * Math.cos((2 * Math.PI * n) / (TAPS - 1));
    taps[n] = sinc * hamming;
    sum += taps[n];
  }
  for (let n = 0; n < TAPS; n++) taps[n] /= sum;
  return taps;
}

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 16000, frameSamples = 320 } = options.processorOptions || {};
    this.ratio = sampleRate / targetRate; // `sampleRate` is the worklet scope's global
    this.taps = lowPass(this.ratio);
    this.history = new Float32Array(TAPS);
    this.head = 0;
    this.inputIndex = 0; // input samples filtered so far
    this.nextOutput = 0; // input-sample position of the next output sample
    this.previous = 0; // the last filtered input sample
    this.frameSamples = frameSamples;
    this.frame = new Int16Array(frameSamples);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const { taps, history } = this;
    for (let i = 0; i < channel.length; i++) {
      history[this.head] = channel[i];
      let filtered = 0;
      let k = this.head;
      for (let t = 0; t < TAPS; t++) {
        filtered += taps[t] * history[k];
        k = k === 0 ? TAPS - 1 : k - 1;
      }
      this.head = (this.head + 1) % TAPS;
      // Output samples between the previous filtered sample and this one: interpolate.
      while (this.nextOutput <= this.inputIndex) {
        const fraction = this.nextOutput - (this.inputIndex - 1);
        this.emit(this.previous + (filtered - this.previous) * fraction);
        this.nextOutput += this.ratio;
      }
      this.previous = filtered;
      this.inputIndex += 1;
    }
    return true;
  }

  emit(sample) {
    const clamped = Math.max(-1, Math.min(1, sample));
    this.frame[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.filled === this.frameSamples) {
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
      this.frame = new Int16Array(this.frameSamples);
      this.filled = 0;
    }
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
