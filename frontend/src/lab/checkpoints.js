// Checkpoints on a lab's page: the lab's (beside the canvas when nothing is selected) and each
// node's (in its inspector). List, take (the save's progress comes from /api/events while the
// request runs), resume (offering force only when the server says it can help) and delete;
// every refusal is shown in the server's words. Another client's checkpoints show at once.

import { del, enc, get, post } from "../api.js";
import { confirmDialog, openDialog } from "../dialog.js";
import { debounce, field, fill, h } from "../dom.js";
import { events } from "../events.js";
import { bytes, dateTime, seconds } from "../format.js";

const TAG_PATTERN = "[A-Za-z][A-Za-z0-9_.\\-]{0,62}";
const FORCE = /\bforce\b/i; // the server's refusal says whether forcing would help
const SAVING = new Set(["saving", "progress"]);

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** The checkpoint UI of one lab page: `nodes()` its nodes now, `reload()` re-reads the lab. */
export class LabCheckpoints {
  constructor({ lab, nodes, reload }) {
    this.lab = lab;
    this.nodes = nodes;
    this.reload = reload;
    this.saves = new Map(); // saves in flight: "node/tag" -> their latest progress event
    this.views = new Map(); // "lab" or a node's id -> its view
    this.reloadSoon = debounce(() => this.refreshAll(), 150);
    this.offs = [
      events.on("checkpoint", (e) => e.lab === lab && this.onEvent(e)),
      events.on("resync", () => {
        this.saves.clear();
        this.refreshAll();
      }),
    ];
  }

  /** The lab's checkpoints: a section for the overview (one element, kept across renders). */
  labPanel() {
    return this.view("lab", () => new View(this, labScope(this))).show();
  }

  /** A node's checkpoints, its own and its parts of the lab's: a section for its inspector. */
  nodePanel(node) {
    return this.view(node.id, () => new View(this, nodeScope(this, node))).show(node);
  }

  view(key, make) {
    if (!this.views.has(key)) this.views.set(key, make());
    return this.views.get(key);
  }

  onEvent(e) {
    const key = `${e.node ?? ""}/${e.tag}`;
    if (SAVING.has(e.state)) this.saves.set(key, e);
    else if (e.state === "saved" || e.state === "failed") this.saves.delete(key);
    for (const view of this.views.values()) if (view.scope.concerns(e)) view.onEvent(e);
    if (!SAVING.has(e.state)) this.reloadSoon();
  }

  /** Re-read the lists on the page now; the others when they are shown again. */
  refreshAll() {
    for (const view of this.views.values()) {
      view.stale = true;
      if (view.el.isConnected) view.load();
      else view.render();
    }
  }

  destroy() {
    this.offs.forEach((off) => off());
  }
}

// What a view lists and where it sends its requests: the lab's, or one node's.
function labScope(cps) {
  const lab = cps.lab;
  return {
    kind: "lab",
    what: `lab ${lab}`,
    base: `/api/labs/${enc(lab)}/checkpoints`,
    concerns: () => true,
    mine: (e) => e.node === null,
    canTake: () => cps.nodes().length > 0,
    empty: "No checkpoints yet. A checkpoint saves every node of the running lab at one moment; resuming from it brings the lab back as it was, at once.",
    resumeText: (cp) => `${cp.nodes.map((n) => n.node).join(", ")} start${cp.nodes.length === 1 ? "s" : ""} from the saved state instead of booting. Every node must be stopped.`,
    deleteText: (cp) => `It is removed from the disks of ${cp.nodes.map((n) => n.node).join(", ")}.`,
    facts: (cp) => [
      bytes(cp.vm_state_size),
      `nodes ${cp.nodes.map((n) => n.node).join(", ")}`,
      cp.nodes.length ? `saved in ${seconds(Math.max(...cp.nodes.map((n) => n.save_seconds)))}` : null,
    ],
    deletable: () => true,
  };  // prettier-ignore
}

function nodeScope(cps, node) {
  const scope = {
    kind: "node",
    node,
    what: node.name,
    base: `/api/nodes/${enc(node.id)}/checkpoints`,
    concerns: (e) => e.node === null || e.node === scope.node.name,
    mine: (e) => e.node === scope.node.name,
    canTake: () => ["running", "suspended"].includes(scope.node.state),
    empty: "No checkpoints of this node.",
    resumeText: () => `${scope.node.name} starts from the saved state instead of booting. It must be stopped.`,
    deleteText: () => `It is removed from the disk of ${scope.node.name}.`,
    facts: (cp) => [
      bytes(cp.vm_state_size),
      `saved in ${seconds(cp.save_seconds)}`,
      cp.lab_checkpoint ? "part of the lab's checkpoint" : null,
    ],
    deletable: (cp) => !cp.lab_checkpoint,
  };  // prettier-ignore
  return scope;
}

class View {
  constructor(cps, scope) {
    this.cps = cps;
    this.scope = scope;
    this.list = null; // null until loaded
    this.stale = true;
    this.loading = null;
    const heading = scope.kind === "lab" ? "h2" : "h3";
    const title = scope.kind === "lab" ? `Checkpoints of lab ${cps.lab}` : `Checkpoints of ${scope.node.name}`;
    this.takeButton = h("button", { type: "button", "aria-label": `Take checkpoint of ${scope.what}`, onclick: () => this.take() }, "Take checkpoint…");
    this.progress = h("div", { class: "checkpoint-saves", "aria-label": `Checkpoint saves of ${scope.what}` });
    this.status = h("p", { class: "form-status", role: "status" });
    this.error = h("p", { class: "error checkpoint-refusal", role: "alert" });
    this.items = h("ul", { class: "checkpoint-list", "aria-label": title });
    this.el = h("section", { class: "checkpoints", "aria-label": title },
      h("div", { class: "checkpoints-head" }, h(heading, {}, "Checkpoints"), this.takeButton),
      this.progress, this.error, this.status, this.items);  // prettier-ignore
  }

  /** Called at each render of the panel around it: current facts, and a load if stale. */
  show(node) {
    if (node) this.scope.node = node;
    if (this.stale && !this.loading) this.load();
    else this.render();
    return this.el;
  }

  async load() {
    this.stale = false;
    const loading = get(this.scope.base).then(
      (list) => ({ list }),
      (exc) => ({ exc }),
    );
    this.loading = loading;
    const { list, exc } = await loading;
    if (this.loading !== loading) return; // a newer load is under way
    this.loading = null;
    if (exc) {
      if (exc.status !== 404) this.error.textContent = `Could not list the checkpoints: ${exc.detail || exc.message}`;
    } else {
      this.list = list;
    }
    this.render();
  }

  render() {
    const scope = this.scope;
    this.takeButton.disabled = !scope.canTake();
    const saving = [...this.cps.saves.values()].filter((e) => scope.concerns(e));
    fill(this.progress, saving.map((e) => saveProgress(e)));
    const focused = this.items.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label") : null;
    if (this.list === null) {
      fill(this.items, h("li", { class: "muted" }, "Loading…"));
    } else if (!this.list.length) {
      fill(this.items, h("li", { class: "muted" }, scope.empty));
    } else {
      fill(this.items, this.list.map((cp) => this.entry(cp)));
    }
    if (focused) this.items.querySelector(`[aria-label="${CSS.escape(focused)}"]`)?.focus();
  }

  entry(cp) {
    const scope = this.scope;
    const ready = cp.state === "ready";
    return h("li", { dataset: { tag: cp.tag, state: cp.state } },
      h("div", { class: "checkpoint-title" },
        h("strong", {}, cp.tag),
        ready ? null : h("span", { class: "badge warn" }, cp.state),
        h("span", { class: "muted small" }, dateTime(cp.created_at))),
      h("div", { class: "muted small" }, scope.facts(cp).filter(Boolean).join(" · ")),
      h("div", { class: "button-row" },
        h("button", { type: "button", class: "small", disabled: !ready, "aria-label": `Resume ${scope.what} from ${cp.tag}`, onclick: () => this.resume(cp) }, "Resume"),
        scope.deletable(cp)
          ? h("button", { type: "button", class: "small danger-soft", disabled: cp.state === "deleting", "aria-label": `Delete checkpoint ${cp.tag} of ${scope.what}`, onclick: () => this.remove(cp) }, "Delete")
          : h("span", { class: "muted small" }, "delete it with the lab's")));  // prettier-ignore
  }

  say(text) {
    this.status.textContent = text;
  }

  refuse(text) {
    this.error.textContent = text;
  }

  onEvent(e) {
    const mine = this.scope.mine(e);
    if (e.state === "saved" && mine) this.say(`Saved ${e.tag}: ${bytes(e.written)}`);
    if (e.state === "failed" && e.detail && (mine || this.scope.kind === "lab")) this.refuse(e.detail);
    if (e.state === "resuming" && this.scope.kind === "node" && mine) this.say(`Resuming from ${e.tag}…`);
    this.render();
  }

  // -- actions -------------------------------------------------------------------------------

  async take() {
    this.refuse("");
    const taken = await takeDialog(this.scope, this.cps.lab);
    if (!taken) return;
    this.say(`Saving ${taken.tag}…`);
    try {
      const cp = await taken.request;
      this.say(`Saved ${cp.tag}: ${bytes(cp.vm_state_size)}`);
    } catch (exc) {
      this.say("");
      this.refuse(exc.detail || exc.message);
    }
    this.cps.refreshAll();
  }

  async resume(cp) {
    this.refuse("");
    const what = this.scope.what;
    if (!(await confirmDialog(`Resume ${what} from ${cp.tag}?`, this.scope.resumeText(cp), "Resume", { danger: false }))) return;
    await this.resumeFrom(cp.tag, false);
  }

  async resumeFrom(tag, force) {
    this.say(`Resuming from ${tag}…`);
    try {
      await post(`${this.scope.base}/${enc(tag)}/resume${force ? "?force=true" : ""}`);
      this.say(`Resumed from ${tag}`);
    } catch (exc) {
      const reason = exc.detail || exc.message;
      this.say("");
      this.refuse(reason);
      if (!force && exc.status === 409 && FORCE.test(reason) && (await forceDialog(this.scope.what, tag, reason))) {
        this.refuse("");
        await this.resumeFrom(tag, true);
        return;
      }
    }
    this.cps.reload();
  }

  async remove(cp) {
    this.refuse("");
    if (!(await confirmDialog(`Delete checkpoint ${cp.tag} of ${this.scope.what}?`, this.scope.deleteText(cp), "Delete checkpoint"))) return;
    try {
      await del(`${this.scope.base}/${enc(cp.tag)}`);
      this.say(`Deleted ${cp.tag}`);
    } catch (exc) {
      this.refuse(exc.detail || exc.message);
    }
    this.cps.refreshAll();
  }
}

/** A save in flight: bytes written so far against the RAM that bounds them, nodes done. */
function saveProgress(e) {
  const ram = Number(e.ram_bytes) || 0;
  const written = Number(e.written) || 0;
  const who = e.node ? e.node : "lab";
  return h("div", { class: "checkpoint-save", dataset: { tag: e.tag } },
    h("span", {}, `Saving ${e.tag}${e.node ? ` of ${e.node}` : ""}`),
    h("progress", { max: ram || 1, value: Math.min(written, ram || written), "aria-label": `Saving checkpoint ${e.tag} of ${who}` }),
    h("span", { class: "progress-text" },
      `${bytes(written)} written, of up to ${bytes(ram)}; ${e.done ?? 0} of ${plural(e.total ?? 0, "node")} saved`));  // prettier-ignore
}

/** Ask for a tag and send the request. Resolves with `{ tag, request }` once the save has
 * started (so a long save runs on behind the page, its progress in the panel), or undefined.
 * A refusal before the save starts is shown in the dialog, as the server wrote it. */
function takeDialog(scope, lab) {
  return openDialog(`Take a checkpoint of ${scope.what}`, (close) => {
    const tag = h("input", { name: "tag", required: true, pattern: TAG_PATTERN, maxlength: 63, autocomplete: "off", autofocus: true });
    const error = h("p", { class: "error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary" }, "Take checkpoint");
    const note = scope.kind === "lab"
      ? "Every node of the lab is paused at one moment, saved (memory, devices and disk), then runs on."
      : `${scope.node.name} is paused, saved (memory, devices and disk), then runs on.`;  // prettier-ignore
    return h("form", {
        class: "modal-body",
        onsubmit: async (e) => {
          e.preventDefault();
          error.textContent = "";
          submit.disabled = true;
          const name = tag.value.trim();
          let off = () => {};
          const started = new Promise((resolve) => {
            off = events.on("checkpoint", (ev) => {
              if (ev.lab === lab && ev.tag === name && ev.state === "saving" && scope.mine(ev)) resolve();
            });
          });
          const request = post(scope.base, { tag: name });
          try {
            await Promise.race([request, started]);
            close({ tag: name, request });
          } catch (exc) {
            error.textContent = exc.detail || exc.message;
            submit.disabled = false;
          } finally {
            off();
          }
        },
      },
      h("p", {}, note),
      field("Tag", tag, "a letter, then letters, digits, _ . or - (up to 63)"),
      error,
      h("div", { class: "actions" }, h("button", { type: "button", onclick: () => close() }, "Cancel"), submit),
    );  // prettier-ignore
  });
}

/** The server refused a resume and said force would help: show its words, ask. */
function forceDialog(what, tag, reason) {
  return openDialog(`Resume ${what} from ${tag} by force?`, (close) =>
    h("div", { class: "modal-body" },
      h("p", { class: "reason" }, reason),
      h("p", {}, "Forcing kills what runs first; what it did since is lost."),
      h("div", { class: "actions" },
        h("button", { type: "button", onclick: () => close(false) }, "Cancel"),
        h("button", { type: "button", class: "danger", autofocus: true, onclick: () => close(true) }, "Force resume"))),
  ).then(Boolean);  // prettier-ignore
}
