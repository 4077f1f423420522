// The lab's dialogs: a node from an image, a link between two interfaces.

import { get, post } from "../api.js";
import { openDialog } from "../dialog.js";
import { field, h } from "../dom.js";

/** The next free name like r1, r2, … in this lab. */
function freeName(nodes, prefix = "r") {
  const taken = new Set(nodes.map((n) => n.name));
  for (let i = 1; ; i += 1) if (!taken.has(`${prefix}${i}`)) return `${prefix}${i}`;
}

/** A host picker: "Automatic placement" (the server's policy), then every host; one that does
 * not answer or is drained is listed but cannot be picked, and says why. */
function hostSelect() {
  const select = h("select", { name: "host" }, h("option", { value: "" }, "Automatic placement"));
  get("/api/hosts")
    .then((hosts) => {
      for (const host of hosts) {
        const why = !host.reachable ? "not answering" : host.drained ? "drained" : "";
        const label = why ? `${host.name} (${why})` : `${host.name} (${host.nodes} node${host.nodes === 1 ? "" : "s"})`;
        select.append(h("option", { value: host.name, disabled: Boolean(why) }, label));
      }
    })
    .catch(() => {}); // automatic placement stays possible; the server says if it cannot place
  return select;
}

/** Create a node from `image` at `position`; resolves with the node, or undefined. */
export function addNodeDialog(lab, image, position, nodes) {
  return openDialog(`Add a node from ${image.name}`, (close) => {
    const cdrom = image.kind === "cdrom";
    const name = h("input", { name: "name", required: true, value: freeName(nodes), autocomplete: "off", autofocus: true });
    const cpus = h("input", { name: "cpus", type: "number", min: 1, max: 64, value: "1", required: true });
    const ram = h("input", { name: "ram_mb", type: "number", min: 16, max: 1048576, value: "256", required: true });
    const nics = h("input", { name: "nics", type: "number", min: 0, max: 32, value: "4", required: true });
    const disk = h("input", { name: "disk_size_mb", type: "number", min: 1, value: "4096", required: cdrom });
    const host = hostSelect();
    const startNow = h("input", { type: "checkbox", name: "start" });
    const error = h("p", { class: "error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary" }, "Add node");
    return h(
      "form",
      {
        class: "modal-body",
        onsubmit: async (e) => {
          e.preventDefault();
          submit.disabled = true;
          error.textContent = "";
          const body = {
            name: name.value.trim(), image: image.name, lab, position,
            cpus: Number(cpus.value), ram_mb: Number(ram.value), nics: Number(nics.value),
          };  // prettier-ignore
          if (cdrom) body.disk_size_mb = Number(disk.value);
          if (host.value) body.host = host.value;
          if (startNow.checked) body.start = true; // one request: a start that fails makes nothing
          try {
            close(await post("/api/nodes", body));
          } catch (exc) {
            error.textContent = exc.detail || exc.message;
            submit.disabled = false;
          }
        },
      },
      h("div", { class: "form-grid" },
        field("Name", name),
        field("CPUs", cpus),
        field("RAM (MB)", ram),
        field("NICs", nics, "eth0, eth1, …"),
        cdrom ? field("Blank disk (MB)", disk, "the disk beside the CD-ROM") : null,
        field("Host", host, "where it runs; automatic: one that answers, is not drained and has room")),
      h("label", { class: "check" }, startNow, " Start it once created"),
      error,
      h("div", { class: "actions" }, h("button", { type: "button", onclick: () => close() }, "Cancel"), submit),
    );  // prettier-ignore
  });
}

/** Interfaces of `node` already carrying one of `links`. */
function usedIfaces(node, links) {
  const used = new Set();
  for (const link of links) {
    if (link.a_node === node.id) used.add(link.a.split(":").pop());
    if (link.b_node === node.id) used.add(link.b.split(":").pop());
  }
  return used;
}

/** Link two interfaces; `a`, `b` are the preselected nodes (or undefined). */
export function linkDialog(lab, nodes, links, a, b) {
  return openDialog("Add a link", (close) => {
    const side = (label, preset) => {
      const node = h("select", { name: `${label}-node`, required: true }, nodes.map((n) => h("option", { value: n.id }, n.name)));
      const iface = h("select", { name: `${label}-iface`, required: true });
      const refill = () => {
        const chosen = nodes.find((n) => n.id === node.value);
        const used = chosen ? usedIfaces(chosen, links) : new Set();
        iface.replaceChildren(
          ...(chosen?.interfaces || []).map((i) =>
            h("option", { value: i.name, disabled: used.has(i.name) }, used.has(i.name) ? `${i.name} (linked)` : i.name),
          ),
        );
        const free = [...iface.options].find((o) => !o.disabled);
        if (free) iface.value = free.value;
      };
      if (preset) node.value = preset;
      node.addEventListener("change", refill);
      refill();
      return { node, iface };
    };
    const from = side("from", a || nodes[0]?.id);
    const to = side("to", b || nodes.find((n) => n.id !== from.node.value)?.id);
    const error = h("p", { class: "error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary", autofocus: true }, "Add link");
    const nameOf = (id) => nodes.find((n) => n.id === id)?.name;
    return h(
      "form",
      {
        class: "modal-body",
        onsubmit: async (e) => {
          e.preventDefault();
          error.textContent = "";
          submit.disabled = true;
          try {
            const link = await post("/api/links", {
              lab,
              a: `${nameOf(from.node.value)}:${from.iface.value}`,
              b: `${nameOf(to.node.value)}:${to.iface.value}`,
            });
            close(link);
          } catch (exc) {
            error.textContent = exc.detail || exc.message;
            submit.disabled = false;
          }
        },
      },
      h("div", { class: "link-ends" },
        h("fieldset", {}, h("legend", {}, "From"), field("From node", from.node), field("From interface", from.iface)),
        h("span", { class: "link-arrow", "aria-hidden": "true" }, "⟷"),
        h("fieldset", {}, h("legend", {}, "To"), field("To node", to.node), field("To interface", to.iface))),
      error,
      h("div", { class: "actions" }, h("button", { type: "button", onclick: () => close() }, "Cancel"), submit),
    );  // prettier-ignore
  });
}
