// The boot-test dialog: boot an image on a throwaway overlay, show the verdict, the serial
// output and the screenshot the server took at the end.

import { enc, post } from "../api.js";
import { openDialog } from "../dialog.js";
import { field, h } from "../dom.js";
import { seconds } from "../format.js";

export function bootTestDialog(image) {
  return openDialog(
    `Boot test: ${image.name}`,
    (close) => {
      const expect = h("input", { name: "expect", placeholder: "login:", maxlength: 200 });
      const secs = h("input", { name: "seconds", type: "number", min: 1, max: 3600, value: "60", required: true });
      const ram = h("input", { name: "ram_mb", type: "number", min: 16, max: 65536, value: "256", required: true });
      const result = h("div", { class: "boot-result", "aria-live": "polite" });
      const run = h("button", { type: "submit", class: "primary" }, "Run boot test");
      const form = h(
        "form",
        {
          class: "modal-body",
          onsubmit: async (e) => {
            e.preventDefault();
            run.disabled = true;
            result.replaceChildren(
              h("p", { class: "busy" }, h("progress", { "aria-label": "Boot test running" }), ` Booting for up to ${secs.value} s…`),
            );
            const body = { seconds: Number(secs.value), ram_mb: Number(ram.value) };
            if (expect.value.trim()) body.expect = expect.value;
            try {
              const out = await post(`/api/images/${enc(image.name)}/boot-test`, body);
              result.replaceChildren(renderResult(image, out));
            } catch (exc) {
              result.replaceChildren(h("p", { class: "error", role: "alert" }, exc.detail || exc.message));
            } finally {
              run.disabled = false;
            }
          },
        },
        h("p", { class: "muted" }, "Boots the image on a throwaway overlay, watches its serial console and takes a screenshot at the end."),
        h("div", { class: "form-row" },
          field("Expected serial text", expect, "passes when this shows; empty: passes if it still runs"),
          field("Seconds", secs),
          field("RAM (MB)", ram)),
        h("div", { class: "actions" }, h("button", { type: "button", onclick: () => close() }, "Close"), run),
        result,
      );  // prettier-ignore
      return form;
    },
    { wide: true },
  );
}

function renderResult(image, out) {
  const verdict = out.passed ? "Passed" : "Failed";
  return h(
    "div",
    { class: out.passed ? "verdict passed" : "verdict failed" },
    h("p", { class: "verdict-line" }, h("strong", {}, verdict), ` in ${seconds(out.seconds)}: ${out.reason}`),
    out.screenshot_png
      ? h("img", {
          class: "boot-shot",
          src: `data:image/png;base64,${out.screenshot_png}`,
          alt: `Screen of ${image.name} at the end of the boot test`,
        })
      : h("p", { class: "muted" }, "No screenshot was taken."),
    h("details", { open: !out.passed },
      h("summary", {}, "Serial output"),
      h("pre", { class: "serial-log", tabindex: 0 }, out.serial || "(nothing)")),
  );  // prettier-ignore
}
