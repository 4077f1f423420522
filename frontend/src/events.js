// /api/events: one WebSocket for the whole page, fanned out by `kind`.
//
// Pages subscribe with `events.on("node", fn)`. After every (re)connection, and after an
// `overflow`, a `resync` is sent to every "resync" listener: the page re-reads its state,
// since changes made while the socket was down were not seen.

import { wsUrl } from "./api.js";

class EventStream {
  constructor() {
    this.listeners = new Map();
    this.status = "connecting";
    this.statusListeners = new Set();
    this.retry = 500;
    this.socket = null;
  }

  start() {
    this.connect();
  }

  connect() {
    this.setStatus("connecting");
    const socket = new WebSocket(wsUrl("/api/events"));
    this.socket = socket;
    socket.onopen = () => {
      this.retry = 500;
      this.setStatus("open");
      this.emit({ kind: "resync" });
    };
    socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (event.kind === "overflow") {
        this.emit({ kind: "resync" });
        return;
      }
      this.emit(event);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.setStatus("closed");
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 10000);
    };
  }

  emit(event) {
    for (const kind of [event.kind, "*"]) {
      for (const fn of this.listeners.get(kind) || []) {
        try {
          fn(event);
        } catch (exc) {
          console.error("event listener failed", exc);
        }
      }
    }
  }

  /** Listen to one kind ("node", "link", "lab", "import", "resync" or "*"); returns the undo. */
  on(kind, fn) {
    if (!this.listeners.has(kind)) this.listeners.set(kind, new Set());
    this.listeners.get(kind).add(fn);
    return () => this.listeners.get(kind).delete(fn);
  }

  onStatus(fn) {
    this.statusListeners.add(fn);
    fn(this.status);
    return () => this.statusListeners.delete(fn);
  }

  setStatus(status) {
    this.status = status;
    for (const fn of this.statusListeners) fn(status);
  }
}

export const events = new EventStream();
