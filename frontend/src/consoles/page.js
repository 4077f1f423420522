// The Consoles page (every open console, in tabs) and a console alone in a window of its own.

import { enc, get } from "../api.js";
import { h } from "../dom.js";
import { focusHeading } from "../router.js";
import { SerialConsole } from "./serial.js";
import { VncConsole } from "./vnc.js";
import { consoles } from "./manager.js";

export function mountConsolesPage(main) {
  main.append(h("div", { class: "page consoles-page" }, h("div", { class: "page-head" }, h("h1", {}, "Consoles")), consoles.el));
  focusHeading(main);
  consoles.showActive();
  return () => consoles.el.remove();
}

/** #/console/NODE/KIND: one console filling the window (opened by "Open in new window"). */
export function mountConsoleWindow(main, { node: ref, kind }) {
  const status = h("span", { class: "conn", role: "status" }, "Loading…");
  const body = h("div", { class: "console-body" });
  main.append(h("div", { class: "console-window" }, h("div", { class: "console-bar" }, h("h1", {}, `${ref} ${kind}`), status), body));
  let session = null;
  get(`/api/nodes/${enc(ref)}`)
    .then((node) => {
      document.title = `${node.name} ${kind} – virtlab`;
      main.querySelector("h1").textContent = `${node.lab}:${node.name} ${kind === "vnc" ? "VNC" : "serial"}`;
      const Kind = kind === "vnc" ? VncConsole : SerialConsole;
      session = new Kind(node, (state, text) => {
        status.textContent = text;
        status.dataset.state = state;
      });
      body.append(session.el);
      session.connect();
      requestAnimationFrame(() => session.show());
    })
    .catch((exc) => {
      status.textContent = exc.detail || exc.message;
    });
  return () => session?.dispose();
}
