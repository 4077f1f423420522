// The Labs page: every lab with its counts; create an empty lab or deploy a topology file.

import { del, enc, get, post, request } from "../api.js";
import { confirmDialog } from "../dialog.js";
import { debounce, field, fill, h } from "../dom.js";
import { events } from "../events.js";
import { attempt, notify } from "../notify.js";
import { focusHeading, navigate } from "../router.js";

const NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,62}";

export function mountLabs(main) {
  const body = h("tbody");
  const error = h("p", { class: "error", role: "alert" });

  const refresh = async () => {
    try {
      const labs = await get("/api/labs");
      fill(body, labs.map(labRow));
      error.textContent = "";
    } catch (exc) {
      error.textContent = `Could not list labs: ${exc.detail}`;
    }
  };
  const later = debounce(refresh, 250);

  const labRow = (lab) =>
    h("tr", { dataset: { lab: lab.name } },
      h("th", { scope: "row" }, h("a", { href: `#/labs/${enc(lab.name)}` }, lab.name)),
      h("td", { class: "num" }, lab.nodes),
      h("td", { class: "num" }, lab.running),
      h("td", { class: "num" }, lab.links),
      h("td", { class: "row-actions" },
        h("button", { type: "button", "aria-label": `Start lab ${lab.name}`, disabled: !lab.nodes,
          onclick: () => attempt(`Start ${lab.name}`, () => post(`/api/labs/${enc(lab.name)}/start`)).then(later) }, "Start"),
        h("button", { type: "button", "aria-label": `Stop lab ${lab.name}`, disabled: !lab.running,
          onclick: () => attempt(`Stop ${lab.name}`, () => post(`/api/labs/${enc(lab.name)}/stop`)).then(later) }, "Stop"),
        h("button", { type: "button", class: "danger", "aria-label": `Destroy lab ${lab.name}`, onclick: () => destroy(lab) }, "Destroy")));  // prettier-ignore

  const destroy = async (lab) => {
    const what = lab.name === "default" ? "Its nodes and links are killed and deleted (the default lab itself stays)." : "Its nodes are killed, and the lab, its nodes, their disks and its links are deleted.";
    if (!(await confirmDialog(`Destroy lab ${lab.name}?`, what, "Destroy lab"))) return;
    await attempt(`Destroy ${lab.name}`, () => del(`/api/labs/${enc(lab.name)}`));
    refresh();
  };

  const name = h("input", { name: "name", required: true, pattern: NAME_PATTERN, autocomplete: "off", placeholder: "lab1" });
  const createError = h("p", { class: "error", role: "alert" });
  const create = h("form", { "aria-label": "New lab",
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const lab = await post("/api/labs", { name: name.value });
        navigate(`#/labs/${enc(lab.name)}`);
      } catch (exc) {
        createError.textContent = exc.detail;
      }
    } },
    h("h2", { class: "card-title" }, "New lab"),
    h("div", { class: "inline-form" }, field("Lab name", name), h("button", { type: "submit", class: "primary" }, "Create lab")),
    h("p", { class: "card-hint" }, "An empty lab: add nodes from images on its canvas."),
    createError);  // prettier-ignore

  const topo = h("input", { type: "file", accept: ".yaml,.yml,.json,application/yaml", class: "visually-hidden", id: "topology-file" });
  const noStart = h("input", { type: "checkbox", name: "nostart" });
  const deployOut = h("p", { role: "status" });
  topo.setAttribute("aria-label", "Deploy a topology file");
  topo.addEventListener("change", async () => {
    const file = topo.files[0];
    topo.value = "";
    if (!file) return;
    deployOut.textContent = `Deploying ${file.name}…`;
    try {
      const lab = await request("POST", `/api/labs?start=${!noStart.checked}`, await file.text(), {
        headers: { "content-type": "application/yaml" },
      });
      deployOut.textContent = lab.changed === false ? `${lab.name}: unchanged` : `Deployed ${lab.name}`;
      notify(deployOut.textContent);
      refresh();
    } catch (exc) {
      deployOut.replaceChildren(h("span", { class: "error" }, `${file.name} refused: ${exc.detail}`));
    }
  });
  const deploy = h("section", { "aria-label": "Deploy a topology file" },
    h("h2", { class: "card-title" }, "Deploy a topology file"),
    h("div", { class: "inline-form" },
      h("label", { class: "button", for: "topology-file" }, "Choose a topology file…"), topo,
      h("label", { class: "check" }, noStart, " without starting it")),
    h("p", { class: "card-hint" }, "A containerlab-style YAML file; deploying the same file again changes nothing."),
    deployOut);  // prettier-ignore

  main.append(
    h("div", { class: "page labs-page" },
      h("div", { class: "page-head" }, h("h1", {}, "Labs")),
      h("div", { class: "cards" }, create, deploy),
      error,
      h("div", { class: "table-wrap" },
        h("table", { class: "grid", "aria-label": "Labs" },
          h("thead", {}, h("tr", {}, ["Lab", "Nodes", "Running", "Links", "Actions"].map((t) => h("th", { scope: "col", class: ["Nodes", "Running", "Links"].includes(t) ? "num" : "" }, t)))),
          body))),
  );  // prettier-ignore
  focusHeading(main);
  const offs = ["node", "lab", "link", "resync"].map((kind) => events.on(kind, later));
  refresh();
  return () => offs.forEach((off) => off());
}
