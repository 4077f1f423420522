// Open consoles, as tabs: several at once, each keeping its connection while other tabs or
// other pages are shown. The tab strip and panels live in one element that the Consoles page
// shows; it is kept (not rebuilt) across page changes.

import { h } from "../dom.js";
import { SerialConsole } from "./serial.js";
import { VncConsole } from "./vnc.js";

const KINDS = { serial: SerialConsole, vnc: VncConsole };
const KIND_LABEL = { serial: "serial", vnc: "VNC" };

class ConsoleManager {
  constructor() {
    this.entries = new Map();
    this.active = null;
    this.listeners = new Set();
    this.tablist = h("div", { class: "tabs", role: "tablist", "aria-label": "Open consoles" });
    this.panels = h("div", { class: "tab-panels" });
    this.empty = h("p", { class: "empty" }, "No console is open. Open one from a node on a lab's page: select the node, then “Serial console” or “VNC console”.");
    this.el = h("div", { class: "consoles" }, this.tablist, this.panels, this.empty);
  }

  count() {
    return this.entries.size;
  }

  onChange(fn) {
    this.listeners.add(fn);
    fn();
  }

  changed() {
    this.empty.hidden = this.entries.size > 0;
    for (const fn of this.listeners) fn();
  }

  /** Open (or bring forward) `node`'s console of `kind` ("serial" or "vnc"). */
  open(node, kind) {
    const key = `${node.id}/${kind}`;
    if (!this.entries.has(key)) this.entries.set(key, this.build(node, kind, key));
    this.activate(key);
    this.changed();
  }

  build(node, kind, key) {
    const title = `${node.lab}:${node.name} ${KIND_LABEL[kind]}`;
    const id = key.replace(/[^A-Za-z0-9]/g, "-");
    const status = h("span", { class: "conn", role: "status" }, "");
    const setStatus = (state, text) => {
      status.textContent = text;
      status.dataset.state = state;
      tab.dataset.state = state;
    };
    const session = new KINDS[kind](node, setStatus);
    const tab = h("button", {
      type: "button",
      role: "tab",
      id: `tab-${id}`,
      class: "tab",
      "aria-selected": "false",
      "aria-controls": `panel-${id}`,
      tabindex: "-1",
      onclick: () => this.activate(key),
      onkeydown: (e) => this.tabKey(e, key),
    }, h("span", { class: "tab-kind" }, KIND_LABEL[kind]), ` ${node.name}`);  // prettier-ignore
    tab.setAttribute("aria-label", `${node.name} ${KIND_LABEL[kind]} console`);
    const tools = [
      h("button", { type: "button", onclick: () => session.connect() }, "Reconnect"),
      kind === "vnc" ? h("button", { type: "button", onclick: () => session.sendCtrlAltDel() }, "Send Ctrl+Alt+Del") : null,
      h("button", { type: "button", onclick: () => window.open(`#/console/${encodeURIComponent(node.id)}/${kind}`, `virtlab-${id}`, "popup,width=900,height=640") }, "Open in new window"),
      h("button", { type: "button", class: "danger-soft", "aria-label": `Close ${KIND_LABEL[kind]} console of ${node.name}`, onclick: () => this.close(key) }, "Close"),
    ];  // prettier-ignore
    const panel = h("section", {
      role: "tabpanel",
      id: `panel-${id}`,
      class: "tab-panel",
      "aria-labelledby": tab.id,
      hidden: true,
      dataset: { console: key },
    },
      h("div", { class: "console-bar" }, h("strong", {}, title), status, h("div", { class: "toolbar" }, tools)),
      h("div", { class: "console-body" }, session.el));  // prettier-ignore
    this.tablist.append(tab);
    this.panels.append(panel);
    session.connect();
    return { key, node, kind, tab, panel, session };
  }

  activate(key) {
    this.active = key;
    for (const entry of this.entries.values()) {
      const on = entry.key === key;
      entry.tab.setAttribute("aria-selected", String(on));
      entry.tab.tabIndex = on ? 0 : -1;
      entry.panel.hidden = !on;
    }
    this.showActive();
  }

  /** Called when the panel becomes visible (a tab switch, or the page shown again). */
  showActive() {
    const entry = this.entries.get(this.active);
    if (entry && document.contains(entry.panel)) requestAnimationFrame(() => entry.session.show());
  }

  tabKey(e, key) {
    const keys = [...this.entries.keys()];
    const i = keys.indexOf(key);
    let next = null;
    if (e.key === "ArrowRight") next = keys[(i + 1) % keys.length];
    else if (e.key === "ArrowLeft") next = keys[(i - 1 + keys.length) % keys.length];
    else if (e.key === "Home") next = keys[0];
    else if (e.key === "End") next = keys[keys.length - 1];
    else if (e.key === "Delete") {
      this.close(key);
      e.preventDefault();
      return;
    }
    if (next) {
      e.preventDefault();
      this.activate(next);
      this.entries.get(next).tab.focus();
    }
  }

  close(key) {
    const entry = this.entries.get(key);
    if (!entry) return;
    entry.session.dispose();
    entry.tab.remove();
    entry.panel.remove();
    this.entries.delete(key);
    if (this.active === key) {
      const last = [...this.entries.keys()].pop();
      if (last) {
        this.activate(last);
        this.entries.get(last).tab.focus();
      } else {
        this.active = null;
      }
    }
    this.changed();
  }
}

export const consoles = new ConsoleManager();
