// A tiny element builder: h("button", { class: "primary", onclick }, "Start").
// Attributes starting with "on" become listeners; `false`/`null` attributes are left out;
// children may be strings, nodes, arrays or null.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "style" && typeof value === "object") {
      Object.assign(el.style, value);
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Replace the children of `el`. */
export function fill(el, ...children) {
  clear(el);
  return append(el, children);
}

let uniq = 0;
/** A document-unique id for label/aria wiring. */
export function uid(prefix = "id") {
  uniq += 1;
  return `${prefix}-${uniq}`;
}

/** A labelled form field: <label>Text <input …></label> with an optional hint. */
export function field(label, input, hint) {
  const hintEl = hint ? h("span", { class: "hint", id: uid("hint") }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  return h("label", { class: "field" }, h("span", { class: "label" }, label), input, hintEl);
}

/** Run `fn` at most once per `ms`, the last call winning. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
