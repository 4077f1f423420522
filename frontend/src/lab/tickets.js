// Console tickets in a node's inspector: when the server's telnet and VNC TCP ports ask for a
// ticket (a console host beyond loopback), "Telnet ticket" and "VNC ticket" fetch one and show
// it with its expiry and the address to use. The browser's own consoles (WebSockets) need none.

import { enc, post } from "../api.js";
import { fill, h } from "../dom.js";
import { attempt } from "../notify.js";
import { allowed } from "./states.js";

const KINDS = [
  ["telnet", "Telnet ticket"],
  ["vnc", "VNC ticket"],
];

/** The panel for `node`, or null when its ports ask for no ticket; `refresh(node)` keeps its
 * buttons current without losing the ticket shown. */
export function ticketPanel(node) {
  if (!node.consoles.tickets_required) return null;
  let current = node;
  let timer = null;
  const result = h("div", { class: "ticket", role: "status", "aria-label": `Console ticket of ${node.name}` });
  const buttons = KINDS.map(([kind, label]) =>
    h("button", { type: "button", "aria-label": `${label} for ${node.name}`, onclick: () => fetchTicket(kind, label) }, label));  // prettier-ignore
  const panel = h(
    "section",
    { class: "tickets", "aria-label": `Console tickets of ${node.name}` },
    h("p", { class: "muted small" }, "Its telnet and VNC ports ask for a ticket: each works once, for a short while."),
    h("div", { class: "button-row" }, buttons),
    result,
  );  // prettier-ignore

  const update = (n) => {
    current = n;
    const live = allowed(n.state, "console");
    buttons[0].disabled = !live || !n.consoles.serial?.telnet_port;
    buttons[1].disabled = !live || !n.consoles.vnc?.port;
  };

  async function fetchTicket(kind, label) {
    const path = `/api/nodes/${enc(current.id)}/console/ticket`;
    const got = await attempt(`${label} for ${current.name}`, () => post(path, { kind }));
    if (got) show(got);
  }

  function show(t) {
    clearInterval(timer);
    const until = Date.now() + (t.expires_in ?? 0) * 1000;
    const left = h("span", { class: "expiry" });
    const use =
      t.kind === "telnet"
        ? [h("code", {}, `telnet ${t.host} ${t.port}`), " then type the ticket at the prompt"]
        : [h("code", {}, `${t.host}:${t.port}`), " in a VNC viewer, the ticket as the password"];
    const tick = () => {
      const s = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      const at = new Date(until).toLocaleTimeString();
      left.textContent = s ? `works once, within ${s} s (until ${at})` : "expired: get a new one";
      if (!s || !panel.isConnected) clearInterval(timer);
    };
    fill(result,
      h("dl", { class: "facts" },
        h("dt", {}, t.kind === "telnet" ? "Telnet ticket" : "VNC ticket"),
        h("dd", {}, h("code", { class: "secret" }, t.ticket ?? "none needed")),
        h("dt", {}, "Expires"), h("dd", {}, left),
        h("dt", {}, "Use"), h("dd", {}, use)));  // prettier-ignore
    tick();
    timer = setInterval(tick, 1000);
  }

  update(node);
  panel.refresh = update;
  return panel;
}
