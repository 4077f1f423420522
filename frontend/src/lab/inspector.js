// The panel beside the canvas: the lab's nodes and links when nothing is selected; a node's
// or a link's details and actions when one is.

import { del, enc, patch, post, probeDownload } from "../api.js";
import { consoles } from "../consoles/manager.js";
import { confirmDialog } from "../dialog.js";
import { field, h } from "../dom.js";
import { attempt, notify } from "../notify.js";
import { navigate } from "../router.js";
import { impairmentForm } from "./impairment.js";
import { allowed } from "./states.js";
import { ticketPanel } from "./tickets.js";

const PATHS = {
  direct: "direct, kernel to kernel",
  relayed: "through a relay in the server (capture, impairment, or a node on a libvirt host)",
  tunnel: "UDP straight between two libvirt hosts (stop its nodes to capture or impair it)",
};

const NODE_ACTIONS = [
  ["start", "Start"],
  ["stop", "Stop"],
  ["kill", "Kill"],
  ["reset", "Reset"],
  ["suspend", "Suspend"],
  ["resume", "Resume"],
  ["wipe", "Wipe"],
];

function stateBadge(state) {
  return h("span", { class: `state state-${state}` }, state);
}

/** `ctx`: { lab, nodes(), links(), thumb(id), select(sel), reload(), refreshThumb(node),
 * checkpoints (lab/checkpoints.js) }. */
export function renderOverview(ctx) {
  const nodes = ctx.nodes();
  const links = ctx.links();
  return h(
    "div",
    { class: "inspector-body" },
    h("h2", {}, "Nodes"),
    nodes.length
      ? h("ul", { class: "entity-list", "aria-label": "Nodes" },
          nodes.map((n) => h("li", { dataset: { node: n.name, state: n.state } },
            h("button", { type: "button", class: "link-like", onclick: () => ctx.select({ type: "node", id: n.id }) }, n.name),
            stateBadge(n.state),
            h("span", { class: "muted small" }, `${n.image} · on ${n.host}`))))
      : h("p", { class: "muted" }, "No nodes yet: add one from an image in the palette (click it, or drag it onto the canvas)."),
    h("h2", {}, "Links"),
    links.length
      ? h("ul", { class: "entity-list", "aria-label": "Links" },
          links.map((l) => h("li", { dataset: { link: l.id } },
            h("button", { type: "button", class: "link-like", onclick: () => ctx.select({ type: "link", id: l.id }) },
              `${l.a} ⟷ ${l.b}`),
            l.state === "down" ? stateBadge("down") : null,
            l.capturing ? h("span", { class: "badge rec" }, "capturing") : null,
            Object.keys(l.impairment || {}).length ? h("span", { class: "badge warn" }, "impaired") : null)))
      : h("p", { class: "muted" }, `No links yet. ${nodes.length > 1 ? "Use “Draw link” and pick two nodes." : ""}`),
    ctx.checkpoints.labPanel(),
  );  // prettier-ignore
}

export function renderNode(ctx, node) {
  const act = (action, label) =>
    h("button", {
      type: "button",
      class: action === "kill" || action === "wipe" ? "danger-soft" : "",
      disabled: !allowed(node.state, action),
      "aria-label": `${label} ${node.name}`,
      onclick: async () => {
        if (action === "wipe" && !(await confirmDialog(`Wipe ${node.name}?`, "It gets a fresh disk from its image; every change on its disk is lost.", "Wipe"))) return;
        await attempt(`${label} ${node.name}`, () => post(`/api/nodes/${enc(node.id)}/${action}`));
        ctx.reload();
      },
    }, label);  // prettier-ignore
  const remove = async () => {
    if (!(await confirmDialog(`Delete node ${node.name}?`, "The node, its disk and its links are deleted.", "Delete node"))) return;
    const ok = await attempt(`Delete ${node.name}`, () => del(`/api/nodes/${enc(node.id)}`).then(() => true));
    if (ok) ctx.select(null);
    ctx.reload();
  };
  const openConsole = (kind) => {
    consoles.open(node, kind);
    navigate("#/consoles");
  };
  const thumb = ctx.thumb(node.id);
  const live = allowed(node.state, "console");
  const serial = node.consoles.serial;
  const vnc = node.consoles.vnc;
  const linkOf = (iface) =>
    ctx.links().find((l) => (l.a_node === node.id && l.a.endsWith(`:${iface}`)) || (l.b_node === node.id && l.b.endsWith(`:${iface}`)));
  return h(
    "div",
    { class: "inspector-body" },
    h("div", { class: "inspector-head" },
      h("button", { type: "button", class: "link-like", onclick: () => ctx.select(null) }, "← All nodes and links"),
      h("h2", {}, `Node ${node.name}`, " ", stateBadge(node.state))),
    thumb
      ? h("figure", { class: "thumb" },
          h("img", { src: thumb, alt: `Screen of ${node.name}` }),
          h("figcaption", {}, h("button", { type: "button", class: "small", onclick: () => ctx.refreshThumb(node) }, "Refresh screenshot")))
      : null,
    node.state === "unknown"
      ? h("p", { class: "unknown-note", role: "status", "aria-label": `Host of ${node.name} not answering` },
          h("strong", {}, `Host ${node.host} is not answering. `),
          `${node.name} may still run there, but nothing can be done to it until the host answers again; `,
          "then it is re-adopted and shows what libvirt says. See the ", h("a", { href: "#/hosts" }, "Hosts"), " page for why.")
      : node.detail ? h("pre", { class: "detail", tabindex: 0, "aria-label": "Why it stopped" }, node.detail) : null,
    h("div", { class: "button-row", role: "group", "aria-label": `Actions on ${node.name}` },
      NODE_ACTIONS.map(([a, label]) => act(a, label)),
      h("button", { type: "button", class: "danger", disabled: !allowed(node.state, "delete"), "aria-label": `Delete ${node.name}`, onclick: remove }, "Delete")),
    h("h3", {}, "Consoles"),
    h("div", { class: "button-row" },
      h("button", { type: "button", disabled: !live || !serial, "aria-label": `Serial console of ${node.name}`, onclick: () => openConsole("serial") }, "Serial console"),
      h("button", { type: "button", disabled: !live || !vnc, "aria-label": `VNC console of ${node.name}`, onclick: () => openConsole("vnc") }, "VNC console")),
    node.consoles.tickets_required ? ctx.keep(`node:${node.id}:tickets`, node, () => ticketPanel(node)) : null,
    h("dl", { class: "facts" },
      serial?.telnet_port ? [h("dt", {}, "Telnet"), h("dd", {}, h("code", {}, `${serial.telnet_host}:${serial.telnet_port}`))] : null,
      vnc?.port ? [h("dt", {}, "VNC"), h("dd", {}, h("code", {}, `${vnc.host}:${vnc.port}`))] : null,
      h("dt", {}, "Host"), h("dd", { class: "node-host" }, h("a", { href: "#/hosts", title: "The Hosts page" }, node.host)),
      h("dt", {}, "Image"), h("dd", {}, node.image),
      h("dt", {}, "CPUs, RAM"), h("dd", {}, `${node.cpus}, ${node.ram_mb} MB`),
      h("dt", {}, "Disk bus, NIC model"), h("dd", {}, `${node.disk_bus}, ${node.nic_model}`)),
    h("h3", {}, "Interfaces"),
    h("table", { class: "grid compact", "aria-label": `Interfaces of ${node.name}` },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "MAC"), h("th", { scope: "col" }, "Link"))),
      h("tbody", {}, node.interfaces.map((i) => {
        const link = linkOf(i.name);
        const peer = link ? (link.a_node === node.id && link.a.endsWith(`:${i.name}`) ? link.b : link.a) : null;
        return h("tr", {}, h("td", {}, i.name), h("td", {}, h("code", {}, i.mac)),
          h("td", {}, link ? h("button", { type: "button", class: "link-like", onclick: () => ctx.select({ type: "link", id: link.id }) }, peer) : "–"));
      }))),
    ctx.checkpoints.nodePanel(node),
    ctx.keep(`node:${node.id}:settings`, node, () => editForm(ctx, node)),
  );  // prettier-ignore
}

function editForm(ctx, node) {
  const cpus = h("input", { type: "number", min: 1, max: 64 });
  const ram = h("input", { type: "number", min: 16, max: 1048576 });
  const nics = h("input", { type: "number", min: 0, max: 32 });
  const status = h("p", { role: "status", class: "form-status" });
  const fields = h("fieldset", {},
    h("div", { class: "form-grid" }, field("CPUs", cpus), field("RAM (MB)", ram), field("NICs", nics)),
    h("button", { type: "submit" }, "Save settings"));  // prettier-ignore
  const why = h("p", { class: "muted small" }, "Stop the node to change its settings.");
  const details = h(
    "details",
    { class: "edit" },
    h("summary", {}, "Settings"),
    h("form", {
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          await patch(`/api/nodes/${enc(node.id)}`, { cpus: Number(cpus.value), ram_mb: Number(ram.value), nics: Number(nics.value) });
          delete details.dataset.dirty;
          status.textContent = "Saved";
          ctx.reload();
        } catch (exc) {
          status.textContent = exc.detail;
        }
      } },
      fields, why, status),
  );  // prettier-ignore
  details.refresh = (current) => {
    cpus.value = String(current.cpus);
    ram.value = String(current.ram_mb);
    nics.value = String(current.interfaces.length);
    fields.disabled = !allowed(current.state, "edit");
    why.hidden = !fields.disabled;
  };
  details.refresh(node);
  return details;
}

export function renderLink(ctx, link) {
  const base = `/api/links/${enc(link.id)}`;
  const call = async (what, fn) => {
    await attempt(what, fn);
    ctx.reload();
  };
  // A plain link for the browser's own download, asked first whether there is a capture, so
  // that a missing one is said in words rather than as a failed download.
  const download = h("a", { href: `${base}/capture`, download: `${link.id}.pcap`, class: "button" }, "Download pcap");
  download.addEventListener("click", async (e) => {
    e.preventDefault();
    try {
      await probeDownload(`${base}/capture`);
    } catch (exc) {
      notify(exc.detail || exc.message, { kind: "error" });
      return;
    }
    const go = h("a", { href: `${base}/capture`, download: `${link.id}.pcap`, hidden: true });
    document.body.append(go);
    go.click();
    go.remove();
  });
  return h(
    "div",
    { class: "inspector-body" },
    h("div", { class: "inspector-head" },
      h("button", { type: "button", class: "link-like", onclick: () => ctx.select(null) }, "← All nodes and links"),
      h("h2", {}, `Link ${link.a} ⟷ ${link.b}`)),
    h("dl", { class: "facts" },
      h("dt", {}, "State"), h("dd", {}, stateBadge(link.state)),
      h("dt", {}, "Path"), h("dd", {}, PATHS[link.path] || (link.relayed ? PATHS.relayed : PATHS.direct)),
      h("dt", {}, "Capture"), h("dd", {}, link.capturing ? h("span", { class: "badge rec" }, "capturing") : "off")),
    h("div", { class: "button-row", role: "group", "aria-label": "Link actions" },
      link.state === "up"
        ? h("button", { type: "button", onclick: () => call("Set down", () => patch(base, { state: "down" })) }, "Set link down")
        : h("button", { type: "button", onclick: () => call("Set up", () => patch(base, { state: "up" })) }, "Set link up"),
      link.capturing
        ? h("button", { type: "button", onclick: () => call("Stop capture", () => post(`${base}/capture/stop`)) }, "Stop capture")
        : h("button", { type: "button", onclick: () => call("Start capture", () => post(`${base}/capture/start`)) }, "Start capture"),
      download,
      h("button", { type: "button", class: "danger", onclick: async () => {
        if (!(await confirmDialog("Remove this link?", `${link.a} and ${link.b} are unplugged.`, "Remove link"))) return;
        await attempt("Remove link", () => del(base));
        ctx.select(null);
        ctx.reload();
      } }, "Remove link")),
    h("h3", {}, "Impairment"),
    ctx.keep(`link:${link.id}:impairment`, link, () => impairmentForm(link, () => ctx.reload())),
  );  // prettier-ignore
}
