// Short messages at the corner of the page, read out by screen readers (a polite live log).

import { h } from "./dom.js";

export function notify(text, { kind = "info", timeout = 6000 } = {}) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h(
    "div",
    { class: `toast ${kind}` },
    h("span", {}, text),
    h("button", { class: "icon", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"),
  );
  box.append(item);
  if (timeout) setTimeout(() => item.remove(), kind === "error" ? timeout * 2 : timeout);
}

/** Run an action, telling the user if it fails; returns its result or undefined. */
export async function attempt(what, fn) {
  try {
    return await fn();
  } catch (exc) {
    notify(`${what}: ${exc.detail || exc.message}`, { kind: "error" });
    return undefined;
  }
}
