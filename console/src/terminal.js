// A terminal in the sandbox's page: xterm.js on a WebSocket to the console, which runs a
// shell on a pseudo-terminal in the sandbox (messages as the runtime API's terminals:
// {type: "output", data: base64} and {type: "exit"} in; {type: "input", data} and
// {type: "resize", rows, cols} out).
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";

function decode(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function start(box) {
  const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}${box.dataset.ws}?rows=${term.rows}&cols=${term.cols}`;
  const ws = new WebSocket(url);
  const state = document.getElementById("terminal-state");
  const say = (text) => { if (state) state.textContent = text; };
  ws.onopen = () => { say("connected"); term.focus(); };
  ws.onclose = () => say("disconnected");
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "output") term.write(decode(message.data));
    else if (message.type === "exit") say("the shell has ended");
    else if (message.type === "error") say(message.message);
  };
  term.onData((data) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "input", data }));
  });
  term.onResize(({ rows, cols }) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", rows, cols }));
  });
  window.addEventListener("resize", () => fit.fit());
  box.terminal = term;  // for tests and the curious: the rendered buffer
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("terminal");
  if (box) start(box);
});
