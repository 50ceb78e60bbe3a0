// The playground's microphone tap, an AudioWorklet processor: it posts each render quantum of
// its input (the microphone, mixed to mono) to the page, until the page posts "stop"; then it
// posts "stopped" (after every block before it, since a port keeps its order) and ends.
"use strict";

class ParleyCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data === "stop") {
        this.stopped = true;
        this.port.postMessage("stopped");
      }
    };
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (channels && channels.length) {
      const n = channels[0].length;
      const mono = new Float32Array(n);
      for (const channel of channels) {
        for (let i = 0; i < n; i++) mono[i] += channel[i] / channels.length;
      }
      this.port.postMessage(mono, [mono.buffer]);
    }
    return true;
  }
}

registerProcessor("parley-capture", ParleyCapture);
