// Dropping or picking image files: one row per file, with the upload's progress, then the
// import's stages (from /api/events, and from /api/imports/{id} as a fallback), then the
// result or the server's reason for refusing it, as written.

import { ApiError, enc, get, newImportId, uploadImage } from "../api.js";
import { h, uid } from "../dom.js";
import { events } from "../events.js";
import { bytes, percent } from "../format.js";

export const STAGES = ["upload", "unpack", "inspect", "examine", "convert", "verify", "register"];
const STAGE_LABEL = {
  upload: "Upload",
  unpack: "Unpack",
  inspect: "Inspect",
  examine: "Examine",
  convert: "Convert",
  verify: "Verify",
  register: "Register",
  done: "Done",
};

/** The drop zone and the list of uploads; `onImported()` runs after each success. */
export function uploader(onImported) {
  const list = h("ul", { class: "uploads", "aria-label": "Uploads" });
  const input = h("input", {
    type: "file",
    multiple: true,
    class: "visually-hidden",
    id: uid("file"),
    onchange: () => {
      for (const file of input.files) list.prepend(uploadRow(file, onImported));
      input.value = "";
    },
  });
  const zone = h(
    "div",
    { class: "dropzone", "data-testid": "dropzone" },
    h("p", { class: "drop-title" }, "Drop disk images here"),
    h(
      "p",
      { class: "drop-hint" },
      "qcow2, VMDK, VDI, VHD(X), raw, ISO, OVA, optionally gzip/xz/bzip2/zstd compressed. ",
      "The content decides the format; unsafe images are refused with the reason.",
    ),
    h("label", { class: "button primary", for: input.id }, "Choose image files…"),
    input,
  );
  input.setAttribute("aria-label", "Choose image files to upload");
  let depth = 0;
  zone.addEventListener("dragenter", (e) => {
    e.preventDefault();
    depth += 1;
    zone.classList.add("over");
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("over");
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    zone.classList.remove("over");
    for (const file of e.dataTransfer.files) list.prepend(uploadRow(file, onImported));
  });
  return h("section", { class: "upload", "aria-label": "Upload images" }, zone, list);
}

function uploadRow(file, onImported) {
  const importId = newImportId();
  const titleId = uid("up");
  const uploadBar = h("progress", { max: 100, value: 0, "aria-label": `Upload of ${file.name}` });
  const uploadText = h("span", { class: "progress-text" }, `0 of ${bytes(file.size)}`);
  const stageBar = h("progress", { max: 100, "aria-label": `Import of ${file.name}` });
  const stageText = h("span", { class: "progress-text" }, "waiting for the upload");
  const steps = h(
    "ol",
    { class: "stages", "aria-label": "Import stages" },
    STAGES.map((s) => h("li", { dataset: { stage: s } }, STAGE_LABEL[s])),
  );
  const outcome = h("div", { class: "outcome", role: "status" });
  const row = h(
    "li",
    { class: "upload-row running", "aria-labelledby": titleId, dataset: { importId } },
    h("div", { class: "upload-head" }, h("strong", { id: titleId }, file.name), h("span", { class: "muted" }, bytes(file.size))),
    h("div", { class: "bars" },
      h("div", { class: "bar" }, h("span", { class: "bar-label" }, "Upload"), uploadBar, uploadText),
      h("div", { class: "bar" }, h("span", { class: "bar-label" }, "Import"), stageBar, stageText)),
    steps,
    outcome,
  );  // prettier-ignore

  let stageIndex = 0;
  let finished = false;
  const showStage = (stage, pct) => {
    const index = stage === "done" ? STAGES.length : STAGES.indexOf(stage);
    if (index < 0 || index < stageIndex || finished) return;
    stageIndex = index;
    for (const li of steps.children) {
      const i = STAGES.indexOf(li.dataset.stage);
      li.className = i < index ? "done" : i === index ? "current" : "";
      if (i === index) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
    }
    if (stage !== "upload") {
      stageBar.value = stage === "done" ? 100 : Number(pct) || 0;
      stageText.textContent = `${STAGE_LABEL[stage] || stage} ${percent(stageBar.value)}`;
    }
  };
  const stopEvents = events.on("import", (event) => {
    if (event.id === importId) showStage(event.stage, event.percent);
  });
  let poll = null;
  const startPolling = () => {
    poll = setInterval(async () => {
      try {
        const job = await get(`/api/imports/${enc(importId)}`);
        showStage(job.stage, job.percent);
      } catch {
        /* not there yet, or gone: the upload's answer says the rest */
      }
    }, 1500);
  };

  uploadImage(file, importId, (loaded, total) => {
    uploadBar.value = total ? (100 * loaded) / total : 0;
    uploadText.textContent = `${bytes(loaded)} of ${bytes(total)}`;
    if (loaded >= total && !poll) {
      showStage("unpack", 0);
      startPolling();
    }
  })
    .then((image) => {
      showStage("done", 100);
      finished = true;
      row.classList.replace("running", "succeeded");
      const also = image.also_imported?.length ? ` (and ${image.also_imported.join(", ")})` : "";
      outcome.replaceChildren(
        h("span", { class: "ok-mark", "aria-hidden": "true" }, "✓ "),
        `Imported as ${image.name}: ${image.format}, from ${image.source_format}${also}`,
      );
      onImported(image);
    })
    .catch(async (exc) => {
      // The import's record says at which stage it was refused.
      const job = await get(`/api/imports/${enc(importId)}`).catch(() => null);
      if (job) showStage(job.stage, job.percent);
      finished = true;
      steps.querySelector('[aria-current="step"]')?.classList.replace("current", "failed");
      row.classList.replace("running", "failed");
      stageText.textContent = `refused at ${STAGE_LABEL[job?.stage] || "upload"}`;
      const status = exc instanceof ApiError && exc.status ? ` (${exc.status})` : "";
      outcome.setAttribute("role", "alert");
      outcome.replaceChildren(
        h("span", { class: "refused-title" }, `Refused${status}: `),
        h("span", { class: "reason" }, exc.detail || exc.message),
      );
    })
    .finally(() => {
      stopEvents();
      if (poll) clearInterval(poll);
    });
  return row;
}
