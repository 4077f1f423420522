// One lab: toolbar, palette of images, the canvas, and the inspector; kept current from
// /api/events (states recolour the canvas as they change, without a reload).

import { del, enc, get, patch, post } from "../api.js";
import { confirmDialog } from "../dialog.js";
import { debounce, fill, h } from "../dom.js";
import { events } from "../events.js";
import { bytes } from "../format.js";
import { LabCanvas } from "../lab/canvas.js";
import { LabCheckpoints } from "../lab/checkpoints.js";
import { addNodeDialog, linkDialog } from "../lab/dialogs.js";
import { renderLink, renderNode, renderOverview } from "../lab/inspector.js";
import { STATE_COLOURS } from "../lab/states.js";
import { Thumbnails } from "../lab/thumbnails.js";
import { attempt, notify } from "../notify.js";
import { focusHeading, navigate } from "../router.js";

export function mountLab(main, { name }) {
  const state = { nodes: new Map(), links: new Map(), images: [], selected: null, gone: false, alive: true };
  const nodes = () => [...state.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
  const links = () => [...state.links.values()];

  const summary = h("p", { class: "lab-summary", role: "status" });
  const inspector = h("aside", { class: "inspector", "aria-label": "Details" });
  const palette = h("ul", { class: "palette-list", "aria-label": "Images to add nodes from" });
  const error = h("p", { class: "error", role: "alert" });

  // -- the canvas and what it reports ------------------------------------------------------
  const savePosition = new Map();
  const canvas = new LabCanvas({
    select: (sel) => select(sel),
    moved: (id, position) => {
      const node = state.nodes.get(id);
      if (node) node.position = position;
      if (!savePosition.has(id)) {
        savePosition.set(id, debounce((p) => attempt("Save position", () => patch(`/api/nodes/${enc(id)}`, { position: p })), 250));
      }
      savePosition.get(id)(position);
    },
    connect: async (a, b) => {
      setLinking(false);
      const link = await linkDialog(name, nodes(), links(), a, b);
      if (link) {
        notify(`Linked ${link.a} and ${link.b}`);
        await reload();
      }
    },
    dropImage: (imageName, position) => {
      const image = state.images.find((i) => i.name === imageName);
      if (image) addNode(image, position);
    },
  });
  const thumbs = new Thumbnails(
    () => nodes().filter((n) => n.state === "running"),
    (id, url) => {
      canvas.setThumb(id, url);
      if (state.selected?.type === "node" && state.selected.id === id) renderInspector();
    },
  );

  const addNode = async (image, position) => {
    const at = position || nextSpot();
    const node = await addNodeDialog(name, image, at, nodes());
    if (node) {
      notify(`Added node ${node.name}`);
      await reload();
    }
  };

  // A free spot near the centre of the view for a node added without dragging.
  const nextSpot = () => {
    const centre = canvas.viewCentre();
    const taken = nodes().map((n) => n.position).filter(Boolean);
    for (let ring = 0; ring < 50; ring += 1) {
      for (let i = 0; i <= ring * 4; i += 1) {
        const angle = ring ? (2 * Math.PI * i) / (ring * 4) : 0;
        const spot = { x: Math.round(centre.x + ring * 140 * Math.cos(angle)), y: Math.round(centre.y + ring * 120 * Math.sin(angle)) };
        if (!taken.some((p) => Math.abs(p.x - spot.x) < 120 && Math.abs(p.y - spot.y) < 100)) return spot;
      }
    }
    return centre;
  };

  // -- loading -----------------------------------------------------------------------------
  const reload = async () => {
    if (!state.alive) return;
    try {
      const lab = await get(`/api/labs/${enc(name)}`);
      if (!state.alive) return; // the page was left while the answer came
      state.nodes = new Map(lab.node_list.map((n) => [n.id, n]));
      state.links = new Map(lab.link_list.map((l) => [l.id, l]));
      await placeUnplaced();
      canvas.sync(nodes(), links());
      renderSummary();
      renderInspector();
      error.textContent = "";
    } catch (exc) {
      if (exc.status === 404) gone(exc.detail);
      else error.textContent = `Could not load lab ${name}: ${exc.detail}`;
    }
  };
  const reloadSoon = debounce(reload, 150);
  const checkpoints = new LabCheckpoints({ lab: name, nodes, reload: () => reload() });

  // Nodes from a topology file may have no position: lay them out on a grid and save it.
  const placeUnplaced = async () => {
    const unplaced = nodes().filter((n) => !n.position);
    if (!unplaced.length) return;
    const placed = nodes().filter((n) => n.position);
    const top = placed.length ? Math.max(...placed.map((n) => n.position.y)) + 160 : 0;
    const columns = Math.ceil(Math.sqrt(unplaced.length));
    await Promise.all(
      unplaced.map((node, i) => {
        node.position = { x: (i % columns) * 220, y: top + Math.floor(i / columns) * 170 };
        return attempt("Save position", () => patch(`/api/nodes/${enc(node.id)}`, { position: node.position }));
      }),
    );
  };

  const loadImages = async () => {
    try {
      state.images = await get("/api/images");
    } catch {
      state.images = [];
    }
    if (!state.alive) return;
    fill(
      palette,
      state.images.length
        ? state.images.map((image) =>
            h("li", {},
              h("button", {
                type: "button", class: "palette-item", draggable: "true",
                "aria-label": `Add node from ${image.name}`,
                title: "Click to add a node, or drag it onto the canvas",
                onclick: () => addNode(image),
                ondragstart: (e) => {
                  e.dataTransfer.setData("application/x-virtlab-image", image.name);
                  e.dataTransfer.effectAllowed = "copy";
                },
              },
              h("span", { class: "palette-name" }, image.name),
              h("span", { class: "muted small" }, `${image.kind} · ${image.source_format} · ${bytes(image.virtual_size)}`))))
        : h("li", { class: "muted" }, "No images: upload one on the ", h("a", { href: "#/images" }, "Images"), " page."),
    );  // prettier-ignore
  };

  // -- rendering ---------------------------------------------------------------------------
  const renderSummary = () => {
    const all = nodes();
    const running = all.filter((n) => n.state === "running").length;
    summary.textContent = `${all.length} node${all.length === 1 ? "" : "s"}, ${running} running, ${state.links.size} link${state.links.size === 1 ? "" : "s"}`;
    startButton.disabled = !all.some((n) => ["stopped", "crashed"].includes(n.state));
    stopButton.disabled = !all.some((n) => ["starting", "running", "suspended"].includes(n.state));
    wipeButton.disabled = !all.some((n) => ["stopped", "crashed"].includes(n.state));
    linkButton.disabled = all.length < 2;
    addLinkButton.disabled = all.length < 2;
    canvas.setEmpty(all.length === 0);
  };

  // Forms in the inspector outlive its re-renders (events re-render it often): one element per
  // form and entity, brought up to date with `refresh(entity)` unless it holds edits not yet
  // applied, so neither typed values nor the last result shown are lost.
  const forms = new Map();
  const keep = (key, entity, build) => {
    const kept = forms.get(key);
    if (kept) {
      if (!kept.dataset.dirty) kept.refresh?.(entity);
      return kept;
    }
    const el = build();
    el.addEventListener("input", () => (el.dataset.dirty = "1"));
    forms.set(key, el);
    return el;
  };
  const ctx = {
    keep,
    lab: name,
    nodes,
    links,
    thumb: (id) => thumbs.url(id),
    select: (sel) => select(sel),
    reload,
    refreshThumb: (node) => thumbs.refresh(node),
    checkpoints,
  };
  const renderInspector = () => {
    const sel = state.selected;
    const node = sel?.type === "node" ? state.nodes.get(sel.id) : null;
    const link = sel?.type === "link" ? state.links.get(sel.id) : null;
    const focused = inspector.contains(document.activeElement) ? document.activeElement : null;
    // A field being typed in is not moved under the user's fingers (moving it would blur it).
    if (focused?.matches("input, select, textarea") && (node || link)) return;
    if (node) fill(inspector, renderNode(ctx, node));
    else if (link) fill(inspector, renderLink(ctx, link));
    else fill(inspector, renderOverview(ctx));
    if (!focused) return;
    // Focus stays where it was: on the same element (a kept form's), or on its namesake.
    const label = focused.getAttribute("aria-label");
    const again = document.contains(focused)
      ? focused
      : label && inspector.querySelector(`[aria-label="${CSS.escape(label)}"]`);
    if (again && !again.disabled) again.focus();
  };

  const select = (sel) => {
    state.selected = sel && (state.nodes.has(sel.id) || state.links.has(sel.id)) ? sel : null;
    canvas.select(state.selected);
    renderInspector();
  };

  const gone = (why) => {
    if (state.gone) return;
    state.gone = true;
    fill(main, h("div", { class: "page" }, h("h1", {}, `Lab ${name}`), h("p", { class: "error", role: "alert" }, why || "This lab no longer exists."),
      h("p", {}, h("a", { href: "#/labs" }, "Back to the labs"))));  // prettier-ignore
  };

  // -- toolbar -----------------------------------------------------------------------------
  const busy = async (button, what, fn) => {
    button.disabled = true;
    try {
      await attempt(what, fn);
    } finally {
      button.disabled = false;
      reload();
    }
  };
  const startButton = h("button", { type: "button", class: "primary", onclick: () => busy(startButton, `Start ${name}`, () => post(`/api/labs/${enc(name)}/start`)) }, "Start lab");
  const stopButton = h("button", { type: "button", onclick: () => busy(stopButton, `Stop ${name}`, () => post(`/api/labs/${enc(name)}/stop`)) }, "Stop lab");
  const wipeButton = h("button", { type: "button", class: "danger-soft", onclick: async () => {
    const targets = nodes().filter((n) => ["stopped", "crashed"].includes(n.state));
    const sure = await confirmDialog(`Wipe lab ${name}?`, `${targets.map((n) => n.name).join(", ")} get fresh disks from their images; every change on their disks is lost. Running nodes are left alone.`, "Wipe");
    if (!sure) return;
    await busy(wipeButton, "Wipe", () => Promise.all(targets.map((n) => post(`/api/nodes/${enc(n.id)}/wipe`))));
    notify(`Wiped ${targets.length} node(s)`);
  } }, "Wipe lab");  // prettier-ignore
  const linkButton = h("button", { type: "button", "aria-pressed": "false", onclick: () => setLinking(linkButton.getAttribute("aria-pressed") !== "true") }, "Draw link");
  const setLinking = (on) => {
    linkButton.setAttribute("aria-pressed", String(on));
    canvas.setLinking(on);
  };
  const addLinkButton = h("button", { type: "button", onclick: async () => {
    const link = await linkDialog(name, nodes(), links());
    if (link) reload();
  } }, "Add link…");  // prettier-ignore
  const destroyButton = h("button", { type: "button", class: "danger", onclick: async () => {
    if (!(await confirmDialog(`Destroy lab ${name}?`, "Its nodes are killed; the nodes, their disks and the links are deleted.", "Destroy lab"))) return;
    const ok = await attempt(`Destroy ${name}`, () => del(`/api/labs/${enc(name)}`).then(() => true));
    if (ok) navigate("#/labs");
  } }, "Destroy lab");  // prettier-ignore

  const legend = h("ul", { class: "legend", "aria-label": "State colours" },
    Object.entries(STATE_COLOURS).map(([s, colour]) => h("li", {}, h("span", { class: "swatch", style: { background: colour } }), s)));  // prettier-ignore

  main.append(
    h("div", { class: "page lab-page" },
      h("div", { class: "page-head lab-head" },
        h("div", {}, h("p", { class: "crumbs" }, h("a", { href: "#/labs" }, "Labs"), " / "), h("h1", {}, name), summary),
        h("div", { class: "toolbar", role: "toolbar", "aria-label": "Lab actions" },
          startButton, stopButton, wipeButton, linkButton, addLinkButton,
          h("button", { type: "button", onclick: () => canvas.fit() }, "Fit view"),
          h("a", { class: "button", href: `/api/labs/${enc(name)}/export`, download: `${name}.yaml` }, "Export YAML"),
          destroyButton)),
      error,
      h("div", { class: "lab-layout" },
        h("nav", { class: "palette", "aria-label": "Palette" }, h("h2", {}, "Add a node"), palette),
        h("div", { class: "canvas-column" }, canvas.el, legend),
        inspector)),
  );  // prettier-ignore
  canvas.start();
  focusHeading(main);

  const onKey = (e) => {
    if (e.key === "Escape" && linkButton.getAttribute("aria-pressed") === "true") setLinking(false);
  };
  document.addEventListener("keydown", onKey);

  const offs = [
    events.on("node", (e) => {
      if (e.lab !== name) return;
      const node = state.nodes.get(e.id);
      if (!node || e.state === "deleted") {
        reloadSoon();
        return;
      }
      const was = node.state;
      Object.assign(node, { state: e.state, detail: e.detail ?? node.detail });
      canvas.setState(node);
      renderSummary();
      renderInspector();
      if (e.state === "running" && was !== "running") setTimeout(() => thumbs.refresh(node), 3000);
      if (!["running", "suspended"].includes(e.state)) thumbs.drop(node.id);
      // Console ports come with the running state: the full record has them.
      if (e.state === "running" || e.state === "stopped") reloadSoon();
    }),
    events.on("link", (e) => e.lab === name && reloadSoon()),
    events.on("lab", (e) => {
      if (e.name !== name) return;
      if (e.state === "destroyed" && name !== "default") gone(`Lab ${name} was destroyed.`);
      else reloadSoon();
    }),
    events.on("import", (e) => e.state === "succeeded" && loadImages()),
    events.on("resync", () => {
      reloadSoon();
      loadImages();
    }),
  ];
  loadImages();
  reload().then(() => thumbs.start());
  return () => {
    state.alive = false;
    offs.forEach((off) => off());
    checkpoints.destroy();
    document.removeEventListener("keydown", onKey);
    thumbs.stop();
    canvas.destroy();
  };
}
