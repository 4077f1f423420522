// The Hosts page: the machines nodes run on (the local host and every libvirt host), their
// facts, and for admins adding, draining and removing them. Everyone logged in may read it.
//
// Kept current by the `host` events of /api/events (added, removed, drained, undrained, up,
// down) and by `node` events (a node made or deleted changes a host's count): each re-reads
// GET /api/hosts. No polling. The list gives the facts as last read from each host (at start-up,
// when added, when it answers again); opening the page, and "Read facts again", ask every host
// for them anew (GET /api/hosts/NAME), so that free memory is today's.

import { del, enc, get, post } from "../api.js";
import { isAdmin } from "../auth.js";
import { confirmDialog } from "../dialog.js";
import { debounce, field, fill, h } from "../dom.js";
import { events } from "../events.js";
import { bytes } from "../format.js";
import { notify } from "../notify.js";
import { focusHeading } from "../router.js";

const MB = 1024 * 1024;
const COLUMNS = ["Name", "URI", "State", "libvirt", "QEMU", "Accelerator", "Free memory", "CPUs", "Nodes", "Drained"];

export function mountHosts(main) {
  const admin = isAdmin();
  const tableBody = h("tbody");
  const problems = h("div", { class: "alerts", role: "alert" });
  let alive = true;
  // Each read is numbered: an answer that comes after a later read was started is dropped (a
  // slow "read facts again" must not put back a drained flag an event has since changed).
  let reads = 0;
  const render = (read, hosts) => {
    if (alive && read === reads) fill(tableBody, hosts.map((host) => hostRow(host)));
  };

  const refresh = async () => {
    const read = ++reads;
    try {
      render(read, await get("/api/hosts"));
    } catch (exc) {
      if (alive) fill(problems, h("p", {}, `Could not list the hosts: ${exc.detail}`));
    }
  };
  const later = debounce(refresh, 200);

  const readButton = h("button", { type: "button", onclick: () => readAgain() }, "Read facts again");
  const readAgain = async () => {
    readButton.disabled = true;
    const read = ++reads;
    try {
      const hosts = await get("/api/hosts");
      render(read, await Promise.all(hosts.map((host) => get(`/api/hosts/${enc(host.name)}`).catch(() => host))));
    } catch (exc) {
      if (alive) fill(problems, h("p", {}, `Could not read the hosts: ${exc.detail}`));
    } finally {
      readButton.disabled = false;
    }
  };

  const hostRow = (host) => {
    const f = host.facts;
    const state = host.reachable
      ? h("span", { class: "state state-up" }, "answering")
      : [h("span", { class: "state state-unknown" }, "not answering"),
         h("div", { class: "reason small" }, host.reason || "no reason given")];  // prettier-ignore
    const memory = f.memory_mb
      ? [bytes(f.free_memory_mb * MB), h("div", { class: "muted small" }, `of ${bytes(f.memory_mb * MB)}; room ${bytes(Math.max(host.room_mb, 0) * MB)}`)]
      : "–";  // prettier-ignore
    return h(
      "tr",
      { dataset: { host: host.name, reachable: String(host.reachable), drained: String(host.drained) } },
      h("th", { scope: "row", class: "name" }, host.name, f.hostname ? h("div", { class: "muted small" }, f.hostname) : null),
      h("td", {}, h("code", { class: "uri" }, host.uri)),
      h("td", { class: "reach" }, state),
      h("td", {}, f.libvirt_version || (host.uri === "local" ? "– (direct QEMU)" : "–")),
      h("td", {}, f.qemu_version || "–"),
      h("td", {}, f.accelerators.length ? f.accelerators.join(", ") : "–"),
      h("td", { class: "num" }, memory),
      h("td", { class: "num" }, f.cpus ? String(f.cpus) : "–"),
      h("td", { class: "num" }, String(host.nodes)),
      h("td", {}, host.drained ? h("span", { class: "badge warn" }, "drained") : "no"),
      admin ? h("td", { class: "row-actions" }, actions(host)) : null,
    );  // prettier-ignore
  };

  const actions = (host) => [
    host.drained
      ? h("button", { type: "button", "aria-label": `Undrain ${host.name}`, onclick: () => drain(host, false) }, "Undrain")
      : h("button", { type: "button", "aria-label": `Drain ${host.name}`, onclick: () => drain(host, true) }, "Drain"),
    host.uri === "local"
      ? null
      : h("button", { type: "button", class: "danger", "aria-label": `Remove ${host.name}`, onclick: () => remove(host) }, "Remove"),
  ];  // prettier-ignore

  const drain = async (host, drained) => {
    try {
      await post(`/api/hosts/${enc(host.name)}/drain`, { drained });
      problems.replaceChildren();
      notify(drained ? `Drained ${host.name}: it takes no new nodes` : `Undrained ${host.name}`);
      refresh();
    } catch (exc) {
      fill(problems, h("p", { class: "error" }, `Cannot ${drained ? "drain" : "undrain"} ${host.name}: `, h("span", { class: "reason" }, exc.detail)));
    }
  };

  const remove = async (host) => {
    const sure = await confirmDialog(
      `Remove host ${host.name}?`,
      `virtlab stops using ${host.uri}. Nothing on the host is touched; a host with nodes cannot be removed.`,
      "Remove host",
    );
    if (!sure) return;
    try {
      await del(`/api/hosts/${enc(host.name)}`);
      problems.replaceChildren();
      notify(`Removed host ${host.name}`);
      refresh();
    } catch (exc) {
      fill(problems, h("p", { class: "error" }, `Cannot remove ${host.name}: `, h("span", { class: "reason" }, exc.detail)));
    }
  };

  main.append(
    h("div", { class: "page hosts-page" },
      h("div", { class: "page-head" }, h("h1", {}, "Hosts"), h("div", { class: "toolbar" }, readButton)),
      h("p", { class: "muted" }, "Where nodes run: this server's own machine (local) and libvirt hosts. ",
        "A node created without a host goes to one that answers, is not drained and has room."),
      admin ? addForm(refresh) : h("p", { class: "muted small read-only" }, "Adding, draining and removing hosts is for admins."),
      problems,
      h("div", { class: "table-wrap" },
        h("table", { class: "grid", "aria-label": "Hosts" },
          h("thead", {}, h("tr", {},
            [...COLUMNS, ...(admin ? ["Actions"] : [])].map((t) =>
              h("th", { scope: "col", class: ["Free memory", "CPUs", "Nodes"].includes(t) ? "num" : "" }, t)))),
          tableBody))),
  );  // prettier-ignore
  focusHeading(main);
  const offs = [
    events.on("host", later),
    events.on("node", later), // a node made, placed or deleted changes its host's count
    events.on("resync", later),
  ];
  refresh().then(readAgain);
  return () => {
    alive = false;
    offs.forEach((off) => off());
  };
}

/** Add a libvirt host: the server connects to it first, and keeps nothing if it cannot. */
function addForm(refresh) {
  const name = h("input", { name: "name", required: true, autocomplete: "off", spellcheck: "false", placeholder: "rack1" });
  const uri = h("input", { name: "uri", required: true, autocomplete: "off", spellcheck: "false", placeholder: "qemu+tls://10.0.0.5/system" });
  const cert = h("input", { name: "tls_cert", autocomplete: "off", spellcheck: "false", placeholder: "/etc/virtlab/pki" });
  const error = h("p", { class: "error", role: "alert" });
  const status = h("p", { class: "form-status", role: "status" });
  const submit = h("button", { type: "submit", class: "primary" }, "Add host");
  const form = h(
    "form",
    { class: "card add-host", "aria-label": "Add a libvirt host",
      onsubmit: async (e) => {
        e.preventDefault();
        submit.disabled = true;
        error.textContent = "";
        status.textContent = `Connecting to ${uri.value.trim()}…`;
        const body = { name: name.value.trim(), uri: uri.value.trim() };
        if (cert.value.trim()) body.tls_cert = cert.value.trim();
        try {
          const host = await post("/api/hosts", body);
          status.textContent = `Added ${host.name}`;
          notify(`Added host ${host.name}`);
          form.reset();
          refresh();
        } catch (exc) {
          status.textContent = "";
          error.textContent = exc.detail || exc.message;
        } finally {
          submit.disabled = false;
        }
      } },
    h("h2", { class: "card-title" }, "Add a libvirt host"),
    h("div", { class: "inline-form" },
      field("Host name", name, "letters, digits, _ . -"),
      field("URI", uri, "qemu+tls://, qemu+ssh://USER@… or qemu+tcp:// (tests)"),
      field("TLS certificate folder", cert, "optional, for qemu+tls: a folder on the server"),
      submit),
    error,
    status,
  );  // prettier-ignore
  return form;
}
