// Hash routes: #/images, #/labs, #/labs/NAME, #/hosts, #/consoles, #/console/NODE/KIND (a window of its own).
// Each page is `mount(container, params) → cleanup`.

const routes = [];

export function route(pattern, mount, { bare = false, nav = null } = {}) {
  const names = [];
  const source = pattern.replace(/:(\w+)/g, (_, name) => {
    names.push(name);
    return "([^/]+)";
  });
  routes.push({ regex: new RegExp(`^${source}$`), names, mount, bare, nav });
}

export function navigate(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}

export function startRouter(main, fallback, onRoute) {
  let cleanup = null;
  const render = () => {
    const path = location.hash.replace(/^#/, "") || fallback;
    for (const r of routes) {
      const match = r.regex.exec(path);
      if (!match) continue;
      const params = Object.fromEntries(r.names.map((n, i) => [n, decodeURIComponent(match[i + 1])]));
      if (cleanup) cleanup();
      main.replaceChildren();
      onRoute(r);
      cleanup = r.mount(main, params) || null;
      return;
    }
    location.replace(`#${fallback}`);
  };
  window.addEventListener("hashchange", render);
  render();
}

/** Put keyboard focus on the page's heading after a page change (for screen readers). */
export function focusHeading(container) {
  const heading = container.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}
