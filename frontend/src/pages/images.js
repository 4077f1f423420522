// The Images page: upload, the catalog, verify, boot test, delete.

import { del, enc, get, post } from "../api.js";
import { confirmDialog } from "../dialog.js";
import { debounce, fill, h } from "../dom.js";
import { events } from "../events.js";
import { bytes, dateTime, shortSha } from "../format.js";
import { notify } from "../notify.js";
import { focusHeading } from "../router.js";
import { bootTestDialog } from "./bootTest.js";
import { uploader } from "./upload.js";

export function mountImages(main) {
  const tableBody = h("tbody");
  const empty = h("p", { class: "empty", hidden: true }, "No images yet: upload one above.");
  const problems = h("div", { class: "alerts", role: "alert" });
  const verifyOut = h("section", { class: "verify-result", "aria-label": "Verification result", hidden: true });
  const verifyButton = h("button", { type: "button", onclick: () => verify() }, "Verify catalog");

  const refresh = async () => {
    try {
      const images = await get("/api/images");
      fill(tableBody, images.map((image) => imageRow(image)));
      empty.hidden = images.length > 0;
    } catch (exc) {
      fill(problems, h("p", {}, `Could not list images: ${exc.detail}`));
    }
  };
  const later = debounce(refresh, 300);

  const imageRow = (image) => {
    const source = [image.source_format, image.source_variant].filter(Boolean).join(" ");
    const wrappers = image.wrappers.length ? ` in ${image.wrappers.join(", ")}` : "";
    return h(
      "tr",
      { dataset: { image: image.name } },
      h("th", { scope: "row", class: "name" }, image.name, h("div", { class: "muted small" }, image.source_name)),
      h("td", {}, image.kind),
      h("td", {}, h("span", { class: "badge" }, image.format)),
      h("td", {}, source + wrappers),
      h("td", { class: "num" }, bytes(image.virtual_size)),
      h("td", { class: "num" }, bytes(image.actual_size)),
      h("td", {}, h("code", { title: image.sha256, class: "sha" }, shortSha(image.sha256)),
        h("button", { type: "button", class: "small copy", "aria-label": `Copy the SHA-256 of ${image.name}`,
          onclick: () => copy(image.sha256) }, "Copy")),
      h("td", {}, h("time", { datetime: image.created_at }, dateTime(image.created_at))),
      h("td", { class: "row-actions" },
        h("button", { type: "button", "aria-label": `Boot test ${image.name}`, onclick: () => bootTestDialog(image) }, "Boot test"),
        h("button", { type: "button", class: "danger", "aria-label": `Delete ${image.name}`, onclick: () => remove(image) }, "Delete")),
    );  // prettier-ignore
  };

  const remove = async (image) => {
    const sure = await confirmDialog(
      `Delete ${image.name}?`,
      "The image and its file are removed from the catalog. Nodes cannot use it any more.",
      "Delete image",
    );
    if (!sure) return;
    try {
      await del(`/api/images/${enc(image.name)}`);
      problems.replaceChildren();
      notify(`Deleted ${image.name}`);
      refresh();
    } catch (exc) {
      fill(problems, h("p", { class: "error" }, `Cannot delete ${image.name}: `, h("span", { class: "reason" }, exc.detail)));
    }
  };

  const verify = async () => {
    verifyButton.disabled = true;
    verifyButton.textContent = "Verifying…";
    verifyOut.hidden = false;
    fill(verifyOut, h("p", { class: "busy" }, h("progress", { "aria-label": "Verifying the catalog" }), " Checking every image…"));
    try {
      const out = await post("/api/images/verify");
      fill(verifyOut, verifyReport(out));
      refresh();
    } catch (exc) {
      fill(verifyOut, h("p", { class: "error" }, exc.detail));
    } finally {
      verifyButton.disabled = false;
      verifyButton.textContent = "Verify catalog";
    }
  };

  main.append(
    h("div", { class: "page images-page" },
      h("div", { class: "page-head" }, h("h1", {}, "Images"), h("div", { class: "toolbar" }, verifyButton)),
      uploader(() => later()),
      problems,
      verifyOut,
      h("div", { class: "table-wrap" },
        h("table", { class: "grid", "aria-label": "Images" },
          h("thead", {}, h("tr", {}, ["Name", "Kind", "Format", "Source format", "Virtual size", "Actual size", "SHA-256", "Added", "Actions"]
            .map((t) => h("th", { scope: "col", class: t.endsWith("size") ? "num" : "" }, t)))),
          tableBody)),
      empty),
  );  // prettier-ignore
  focusHeading(main);
  const offs = [
    events.on("import", (e) => e.state === "succeeded" && later()),
    events.on("resync", later),
  ];
  refresh();
  return () => offs.forEach((off) => off());
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    notify("SHA-256 copied");
  } catch {
    notify(`SHA-256: ${text}`, { timeout: 20000 });
  }
}

function verifyReport(out) {
  const bad = out.images.filter((i) => !i.ok);
  const scan = out.scan;
  return h(
    "div",
    { class: out.ok ? "verdict passed" : "verdict failed" },
    h("p", { class: "verdict-line" }, h("strong", {}, out.ok ? "Catalog verified" : "Problems found"),
      `: ${out.images.length} image(s) checked, ${bad.length} with problems.`),
    scan.added.length ? h("p", {}, `Found and registered: ${scan.added.join(", ")}`) : null,
    Object.keys(scan.refused).length
      ? h("ul", {}, Object.entries(scan.refused).map(([name, why]) => h("li", {}, `${name} refused: ${why}`)))
      : null,
    scan.missing.length ? h("p", {}, `Missing files: ${scan.missing.join(", ")}`) : null,
    bad.length ? h("ul", {}, bad.map((i) => h("li", {}, `${i.name}: ${i.problems.join("; ")}`))) : null,
  );  // prettier-ignore
}
