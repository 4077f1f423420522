// A link's impairment, one fieldset per direction: delay, jitter, loss, corruption, rate.

import { enc, patch } from "../api.js";
import { field, h } from "../dom.js";

const FIELDS = [
  ["delay_ms", "Delay (ms)", 60000, "any"],
  ["jitter_ms", "Jitter (ms)", 60000, "any"],
  ["loss_pct", "Loss (%)", 100, "any"],
  ["corrupt_pct", "Corruption (%)", 100, "any"],
  ["rate_kbps", "Rate (kbit/s, 0: unlimited)", 100000000, "1"],
];

export function impairmentForm(link, onChanged) {
  const ways = [
    ["a_to_b", `${link.a} → ${link.b}`],
    ["b_to_a", `${link.b} → ${link.a}`],
  ];
  const inputs = {};
  const status = h("p", { role: "status", class: "form-status" });
  const fieldsets = ways.map(([way, legend]) => {
    inputs[way] = {};
    return h(
      "fieldset",
      { class: "impair-way" },
      h("legend", {}, legend),
      FIELDS.map(([key, label, max, step]) => {
        const input = h("input", { type: "number", min: 0, max, step, name: `${way}.${key}` });
        inputs[way][key] = input;
        return field(label, input);
      }),
    );
  });
  const send = async (impairment, what) => {
    status.textContent = `${what}…`;
    try {
      const updated = await patch(`/api/links/${enc(link.id)}`, { impairment });
      delete form.dataset.dirty;
      form.refresh(updated);
      status.textContent = `${what}: done`;
      onChanged(updated);
    } catch (exc) {
      status.textContent = `${what} refused: ${exc.detail}`;
    }
  };
  const form = h(
    "form",
    {
      class: "impairment",
      "aria-label": "Impairment",
      onsubmit: (e) => {
        e.preventDefault();
        const impairment = {};
        for (const [way] of ways) {
          impairment[way] = Object.fromEntries(FIELDS.map(([key]) => [key, Number(inputs[way][key].value) || 0]));
        }
        send(impairment, "Impairment");
      },
    },
    fieldsets,
    h("div", { class: "actions" },
      h("button", { type: "button", onclick: () => send({}, "Clearing") }, "Clear impairment"),
      h("button", { type: "submit", class: "primary" }, "Apply impairment")),
    status,
  );  // prettier-ignore
  form.refresh = (current) => {
    for (const [way] of ways) {
      for (const [key] of FIELDS) inputs[way][key].value = String(current.impairment?.[way]?.[key] ?? 0);
    }
  };
  form.refresh(link);
  return form;
}
