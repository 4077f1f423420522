// A node's serial console in xterm.js over /api/nodes/{id}/console/serial: output arrives as
// binary frames (the scrollback first), keystrokes go back as text frames.

import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import { wsUrl } from "../api.js";
import { h } from "../dom.js";

export class SerialConsole {
  constructor(node, setStatus) {
    this.node = node;
    this.setStatus = setStatus;
    this.el = h("div", { class: "term", role: "application", "aria-label": `Serial console of ${node.name}` });
    this.term = new Terminal({
      cursorBlink: true,
      scrollback: 5000,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', 'Liberation Mono', Menlo, monospace",
      fontSize: 14,
      theme: { background: "#0f1720", foreground: "#dbe4ee", cursor: "#f0b429" },
    });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    this.opened = false;
    this.socket = null;
    this.term.onData((data) => this.send(data));
    this.term.onBinary((data) => this.send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
    this.resizeObserver = new ResizeObserver(() => this.refit());
  }

  /** Attach to the page (xterm measures its element, so only once it is shown). */
  show() {
    if (!this.opened) {
      this.term.open(this.el);
      this.opened = true;
      this.resizeObserver.observe(this.el);
    }
    this.refit();
    this.term.focus();
  }

  refit() {
    if (this.opened && this.el.offsetParent !== null) {
      try {
        this.fit.fit();
      } catch {
        /* not laid out yet */
      }
    }
  }

  connect() {
    this.close();
    this.setStatus("connecting", "Connecting…");
    const socket = new WebSocket(wsUrl(this.node.consoles.serial.ws));
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => this.setStatus("open", "Connected");
    socket.onmessage = (m) => {
      this.term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data));
    };
    socket.onclose = (e) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.setStatus("closed", `Disconnected${e.reason ? `: ${e.reason}` : ""}`);
    };
  }

  send(data) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(data);
  }

  close() {
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close();
  }

  dispose() {
    this.close();
    this.resizeObserver.disconnect();
    this.term.dispose();
  }
}
