// The canvas's look: nodes coloured by state (with the state also written under the name, so
// colour is never the only cue; an `unknown` node also says its host is not answering), links
// labelled with their interfaces and their condition.

import { STATE_COLOURS } from "./states.js";

const stateRules = Object.entries(STATE_COLOURS).map(([state, colour]) => ({
  selector: `node.${state}`,
  style: { "border-color": colour, "background-color": colour },
}));

export const cyStyle = [
  {
    selector: "node",
    style: {
      shape: "round-rectangle",
      width: 92,
      height: 60,
      "background-color": "#7b8698",
      "background-opacity": 0.18,
      "border-width": 4,
      "border-color": "#7b8698",
      label: "data(label)",
      "text-wrap": "wrap",
      "text-valign": "bottom",
      "text-margin-y": 8,
      "font-size": 13,
      "font-family": "system-ui, sans-serif",
      color: "#17202c",
      "text-background-color": "#ffffff",
      "text-background-opacity": 0.85,
      "text-background-padding": 2,
      "text-background-shape": "round-rectangle",
    },
  },
  ...stateRules,
  {
    selector: "node.has-thumb",
    style: {
      "background-image": "data(thumb)",
      "background-fit": "cover",
      "background-opacity": 1,
    },
  },
  { selector: "node.running", style: { "background-opacity": 0.28 } },
  { selector: "node.has-thumb.running", style: { "background-opacity": 1 } },
  { selector: "node.crashed", style: { "border-style": "double", "border-width": 6 } },
  // unknown: its host does not answer; what runs there is not known (a dashed outline, faded).
  { selector: "node.unknown", style: { "border-style": "dashed", "background-opacity": 0.08, color: "#4a2d66" } },
  { selector: "node:selected", style: { "overlay-color": "#2563eb", "overlay-opacity": 0.18, "overlay-padding": 6 } },
  { selector: "node.link-source", style: { "overlay-color": "#f59e0b", "overlay-opacity": 0.35, "overlay-padding": 8 } },
  {
    selector: "edge",
    style: {
      width: 3,
      "line-color": "#4b5b73",
      "curve-style": "bezier",
      "source-label": "data(aLabel)",
      "target-label": "data(bLabel)",
      "source-text-offset": 30,
      "target-text-offset": 30,
      label: "data(badge)",
      "font-size": 11,
      color: "#17202c",
      "text-background-color": "#ffffff",
      "text-background-opacity": 0.9,
      "text-background-padding": 2,
      "text-rotation": "none",
    },
  },
  { selector: "edge.down", style: { "line-style": "dashed", "line-color": "#9aa5b5" } },
  { selector: "edge.impaired", style: { "line-color": "#c98a00", "line-style": "dotted", width: 4 } },
  { selector: "edge.capturing", style: { "line-color": "#b42318", width: 5 } },
  { selector: "edge:selected", style: { "overlay-color": "#2563eb", "overlay-opacity": 0.2, "overlay-padding": 6 } },
];
