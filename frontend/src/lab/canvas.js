// The lab's topology on a cytoscape canvas.
//
// Model coordinates are the nodes' saved positions (the API's `position`). Over the canvas
// lies a layer of buttons, one per node, that follow the nodes: they give each node an
// accessible name, keyboard focus (Enter selects, arrow keys move it) and a box that tests can
// aim the mouse at. They let the mouse through to the canvas, where dragging happens.

import cytoscape from "cytoscape";
import { h } from "../dom.js";
import { cyStyle } from "./cyStyle.js";
import { stateNote } from "./states.js";

const STEP = 10;

export class LabCanvas {
  /**
   * `on` holds callbacks: select({type, id} | null), moved(id, {x, y}), connect(aId, bId),
   * dropImage(imageName, {x, y}).
   */
  constructor(on) {
    this.on = on;
    this.container = h("div", { class: "cy", "aria-hidden": "true" });
    this.overlay = h("div", { class: "canvas-overlay" });
    this.hint = h("p", { class: "canvas-hint", role: "status" });
    this.emptyNote = h("p", { class: "canvas-empty", hidden: true }, "Drag an image here from the palette to add a node");
    this.el = h("div", { class: "canvas", role: "region", "aria-label": "Topology canvas" },
      this.container, this.overlay, this.hint, this.emptyNote);  // prettier-ignore
    this.linking = false;
    this.linkSource = null;
    this.hits = new Map();
    this.fitted = false;
    this.frame = 0;
  }

  /** Create cytoscape once the element is in the document (it measures its container). */
  start() {
    this.cy = cytoscape({
      container: this.container,
      style: cyStyle,
      minZoom: 0.25,
      maxZoom: 2.5,
      boxSelectionEnabled: false,
      selectionType: "single",
    });
    const cy = this.cy;
    cy.on("tap", "node", (e) => this.tapNode(e.target.id()));
    cy.on("tap", "edge", (e) => !this.linking && this.on.select({ type: "link", id: e.target.id() }));
    cy.on("tap", (e) => {
      if (e.target === cy) {
        if (this.linking) this.setLinkSource(null);
        else this.on.select(null);
      }
    });
    cy.on("dragfree", "node", (e) => this.on.moved(e.target.id(), this.rounded(e.target.position())));
    cy.on("pan zoom resize position add remove data", () => this.scheduleOverlay());
    this.container.addEventListener("dragover", (e) => {
      if (e.dataTransfer.types.includes("application/x-virtlab-image")) {
        e.preventDefault();
        e.dataTransfer.dropEffect = "copy";
      }
    });
    this.container.addEventListener("drop", (e) => {
      const image = e.dataTransfer.getData("application/x-virtlab-image");
      if (!image) return;
      e.preventDefault();
      const box = this.container.getBoundingClientRect();
      this.on.dropImage(image, this.toModel(e.clientX - box.left, e.clientY - box.top));
    });
    this.resizeObserver = new ResizeObserver(() => cy.resize());
    this.resizeObserver.observe(this.container);
  }

  gone() {
    return !this.cy || this.cy.destroyed();
  }

  destroy() {
    this.resizeObserver?.disconnect();
    cancelAnimationFrame(this.frame);
    this.cy?.destroy();
  }

  rounded(p) {
    return { x: Math.round(p.x), y: Math.round(p.y) };
  }

  toModel(rx, ry) {
    const pan = this.cy.pan();
    const zoom = this.cy.zoom();
    return this.rounded({ x: (rx - pan.x) / zoom, y: (ry - pan.y) / zoom });
  }

  /** The centre of what is on screen, in model coordinates. */
  viewCentre() {
    return this.toModel(this.container.clientWidth / 2, this.container.clientHeight / 2);
  }

  setEmpty(empty) {
    this.emptyNote.hidden = !empty;
  }

  /** Make the canvas show exactly these nodes and links. */
  sync(nodes, links) {
    if (this.gone()) return;
    const cy = this.cy;
    const wanted = new Set([...nodes.map((n) => n.id), ...links.map((l) => l.id)]);
    cy.batch(() => {
      cy.elements().forEach((el) => {
        if (!wanted.has(el.id())) el.remove();
      });
      for (const node of nodes) this.putNode(node);
      for (const link of links) this.putLink(link);
    });
    // Fit the view once, to the nodes there are when the page opens; later it stays put, so a
    // node dropped on the canvas stays under the pointer (an empty lab starts at zoom 1).
    if (!this.fitted) {
      if (nodes.length) this.fit();
      this.fitted = true;
    }
    this.scheduleOverlay();
  }

  putNode(node) {
    const cy = this.cy;
    let el = cy.getElementById(node.id);
    const note = stateNote(node);
    const label = `${node.name}\n${node.state}${note ? `\n(${note})` : ""}`;
    if (el.empty()) {
      el = cy.add({ group: "nodes", data: { id: node.id, label }, position: node.position || { x: 0, y: 0 } });
    } else {
      el.data("label", label);
      if (node.position && !el.grabbed()) el.position(node.position);
    }
    el.classes([node.state, el.data("thumb") ? "has-thumb" : ""].filter(Boolean));
    if (this.linkSource === node.id) el.addClass("link-source");
    this.hitFor(node);
  }

  putLink(link) {
    const cy = this.cy;
    const ifaceA = link.a.split(":").pop();
    const ifaceB = link.b.split(":").pop();
    const impaired = Object.keys(link.impairment || {}).length > 0;
    const badges = [link.state === "down" ? "down" : "", link.capturing ? "● capturing" : "", impaired ? "impaired" : ""];
    const data = { id: link.id, source: link.a_node, target: link.b_node, aLabel: ifaceA, bLabel: ifaceB, badge: badges.filter(Boolean).join(" · ") };
    let el = cy.getElementById(link.id);
    if (el.empty()) el = cy.add({ group: "edges", data });
    else el.data(data);
    el.classes([link.state === "down" ? "down" : "", link.capturing ? "capturing" : "", impaired ? "impaired" : ""].filter(Boolean));
  }

  /** A node changed state (from /api/events): recolour it without a reload. */
  setState(node) {
    if (this.gone()) return;
    if (this.cy.getElementById(node.id).nonempty()) this.putNode(node);
  }

  setThumb(id, url) {
    if (this.gone()) return;
    const el = this.cy.getElementById(id);
    if (el.empty()) return;
    if (url) {
      el.data("thumb", url);
      el.addClass("has-thumb");
    } else {
      el.removeData("thumb");
      el.removeClass("has-thumb");
    }
  }

  select(sel) {
    if (this.gone()) return;
    this.cy.elements().unselect();
    if (sel) this.cy.getElementById(sel.id).select();
  }

  fit() {
    if (this.gone()) return;
    if (!this.cy.nodes().length) return;
    this.cy.fit(undefined, 60);
    if (this.cy.zoom() > 1.2) {
      this.cy.zoom(1.2);
      this.cy.center();
    }
  }

  // -- drawing a link: pick the first node, then the second ---------------------------------

  setLinking(on) {
    this.linking = on;
    this.cy.autoungrabify(on);
    this.setLinkSource(null);
    this.el.classList.toggle("linking", on);
  }

  setLinkSource(id) {
    if (this.linkSource) this.cy.getElementById(this.linkSource).removeClass("link-source");
    this.linkSource = id;
    if (id) this.cy.getElementById(id).addClass("link-source");
    const name = id ? this.cy.getElementById(id).data("label").split("\n")[0] : "";
    this.hint.textContent = !this.linking ? "" : id ? `Link from ${name}: now pick the other node (Escape cancels)` : "Draw a link: pick the first node (Escape cancels)";
  }

  tapNode(id) {
    if (!this.linking) {
      this.on.select({ type: "node", id });
      return;
    }
    if (!this.linkSource) {
      this.setLinkSource(id);
    } else if (this.linkSource !== id) {
      const from = this.linkSource;
      this.on.connect(from, id);
    }
  }

  // -- the accessible layer ------------------------------------------------------------------

  hitFor(node) {
    let hit = this.hits.get(node.id);
    if (!hit) {
      hit = h("button", {
        type: "button",
        class: "node-hit",
        onkeydown: (e) => this.nodeKey(e, node.id),
        onclick: () => this.tapNode(node.id),
      });
      this.hits.set(node.id, hit);
      this.overlay.append(hit);
    }
    hit.dataset.state = node.state;
    hit.dataset.node = node.name;
    const note = stateNote(node);
    hit.setAttribute("aria-label", `Node ${node.name}, ${node.state}${note ? `, ${note}` : ""}`);
    return hit;
  }

  nodeKey(e, id) {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const move = moves[e.key];
    if (!move || this.linking) return;
    e.preventDefault();
    const el = this.cy.getElementById(id);
    const step = e.shiftKey ? STEP * 5 : STEP;
    const p = el.position();
    el.position({ x: p.x + move[0] * step, y: p.y + move[1] * step });
    this.on.moved(id, this.rounded(el.position()));
  }

  scheduleOverlay() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.placeOverlay();
    });
  }

  placeOverlay() {
    const present = new Set();
    this.cy.nodes().forEach((el) => {
      const hit = this.hits.get(el.id());
      if (!hit) return;
      present.add(el.id());
      const box = el.renderedBoundingBox({ includeLabels: false, includeOverlays: false });
      Object.assign(hit.style, {
        left: `${box.x1}px`,
        top: `${box.y1}px`,
        width: `${box.w}px`,
        height: `${box.h}px`,
      });
    });
    for (const [id, hit] of this.hits) {
      if (!present.has(id)) {
        hit.remove();
        this.hits.delete(id);
      }
    }
  }
}
