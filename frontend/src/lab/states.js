// Node states: their colours on the canvas and which actions each allows (the server's table,
// mirrored so buttons are disabled when the server would refuse; the server still decides).

export const STATE_COLOURS = {
  stopped: "#7b8698",
  starting: "#c98a00",
  running: "#23915a",
  suspended: "#3b73c4",
  stopping: "#c4640a",
  crashed: "#cf3a3a",
  unknown: "#8a5fb0",
};

const S = ["stopped", "starting", "running", "suspended", "stopping", "crashed", "unknown"];
const ALLOWED = {
  start: ["stopped", "crashed"],
  stop: ["starting", "running", "suspended"],
  kill: ["starting", "running", "suspended", "stopping"],
  reset: ["running"],
  suspend: ["running"],
  resume: ["suspended"],
  wipe: ["stopped", "crashed"],
  delete: ["stopped", "crashed"],
  edit: ["stopped", "crashed"],
  console: ["starting", "running", "suspended", "stopping", "unknown"],
  screenshot: ["running", "suspended"],
};

export const STATES = S;

export function allowed(state, action) {
  return (ALLOWED[action] || []).includes(state);
}

/** What the state alone does not say, in words: for `unknown`, that the node's host does not
 * answer (the canvas writes it under the node, the inspector above its actions). */
export function stateNote(node) {
  if (node.state !== "unknown") return "";
  return `host ${node.host || "?"} not answering`;
}
