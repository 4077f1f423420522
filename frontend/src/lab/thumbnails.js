// Screenshots of the running nodes, as thumbnails on the canvas and in the inspector:
// one node at a time, every few seconds, only while the page is visible.

import { enc } from "../api.js";

const EVERY_MS = 8000;

export class Thumbnails {
  /** `nodes()` gives the current nodes; `show(id, url | null)` puts a thumbnail up. */
  constructor(nodes, show) {
    this.nodes = nodes;
    this.show = show;
    this.urls = new Map();
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.tick();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const url of this.urls.values()) URL.revokeObjectURL(url);
    this.urls.clear();
  }

  url(id) {
    return this.urls.get(id) || null;
  }

  /** Take one node's screenshot now (after it starts, or on request). */
  async refresh(node) {
    if (!["running", "suspended"].includes(node.state)) {
      this.drop(node.id);
      return;
    }
    try {
      const res = await fetch(`/api/nodes/${enc(node.id)}/screenshot`);
      if (!res.ok || this.stopped) return;
      const url = URL.createObjectURL(await res.blob());
      const old = this.urls.get(node.id);
      this.urls.set(node.id, url);
      this.show(node.id, url);
      if (old) URL.revokeObjectURL(old);
    } catch {
      /* the node stopped meanwhile: the next round says so */
    }
  }

  drop(id) {
    const old = this.urls.get(id);
    if (!old) return;
    this.urls.delete(id);
    this.show(id, null);
    URL.revokeObjectURL(old);
  }

  async tick() {
    if (this.stopped) return;
    if (!document.hidden) {
      for (const node of this.nodes()) {
        if (this.stopped) return;
        await this.refresh(node);
      }
    }
    this.timer = setTimeout(() => this.tick(), EVERY_MS);
  }
}
