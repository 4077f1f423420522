// Modal dialogs on <dialog>: focus goes in, Escape closes, focus comes back where it was.

import { h } from "./dom.js";

/**
 * Open a modal dialog. `build(close)` returns the body; the dialog gets `title` as its
 * accessible name. Resolves with what `close(value)` was given (undefined on Escape).
 */
export function openDialog(title, build, { wide = false } = {}) {
  return new Promise((resolve) => {
    const before = document.activeElement;
    const heading = h("h2", {}, title);
    const dialog = h("dialog", { class: wide ? "modal wide" : "modal" });
    heading.id = `dlg-${Math.random().toString(36).slice(2)}`;
    dialog.setAttribute("aria-labelledby", heading.id);
    let done = false;
    const close = (value) => {
      if (done) return;
      done = true;
      dialog.close();
      dialog.remove();
      if (before && typeof before.focus === "function" && document.contains(before)) before.focus();
      resolve(value);
    };
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      close(undefined);
    });
    dialog.append(
      h(
        "header",
        { class: "modal-head" },
        heading,
        h("button", { class: "icon", "aria-label": "Close", onclick: () => close(undefined) }, "×"),
      ),
      build(close),
    );
    document.body.append(dialog);
    dialog.showModal();
    const first =
      dialog.querySelector("[autofocus]") || dialog.querySelector("input, select, textarea, button.primary");
    if (first) first.focus();
  });
}

/** Ask yes or no; resolves true when confirmed. */
export function confirmDialog(title, message, confirmLabel = "Confirm", { danger = true } = {}) {
  return openDialog(title, (close) =>
    h(
      "div",
      { class: "modal-body" },
      h("p", {}, message),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", onclick: () => close(false) }, "Cancel"),
        h(
          "button",
          { type: "button", class: danger ? "danger" : "primary", autofocus: true, onclick: () => close(true) },
          confirmLabel,
        ),
      ),
    ),
  ).then(Boolean);
}
