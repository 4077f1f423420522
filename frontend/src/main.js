// The page's shell: navigation, the live indicator, the routes.

import "@xterm/xterm/css/xterm.css";
import "./styles/base.css";
import "./styles/images.css";
import "./styles/lab.css";
import "./styles/checkpoints.css";
import "./styles/consoles.css";
import "./styles/hosts.css";

import { showAccount, showLogin, whoAmI } from "./auth.js";
import { consoles } from "./consoles/manager.js";
import { mountConsolesPage, mountConsoleWindow } from "./consoles/page.js";
import { events } from "./events.js";
import { mountHosts } from "./pages/hosts.js";
import { mountImages } from "./pages/images.js";
import { mountLab } from "./pages/lab.js";
import { mountLabs } from "./pages/labs.js";
import { route, startRouter } from "./router.js";

route("/images", mountImages, { nav: "images" });
route("/labs", mountLabs, { nav: "labs" });
route("/labs/:name", mountLab, { nav: "labs" });
route("/hosts", mountHosts, { nav: "hosts" });
route("/consoles", mountConsolesPage, { nav: "consoles" });
route("/console/:node/:kind", mountConsoleWindow, { bare: true });

const LIVE = {
  open: "Live",
  connecting: "Connecting…",
  closed: "Offline: reconnecting…",
};

async function start() {
  // The skip link must not change the hash: the hash is the route.
  document.querySelector(".skip-link").addEventListener("click", (e) => {
    e.preventDefault();
    document.getElementById("main").focus();
  });
  let me;
  try {
    me = await whoAmI();
  } catch (exc) {
    me = null;
    showLogin(`the server could not be reached: ${exc.detail || exc.message}`);
    return;
  }
  if (!me) {
    showLogin();
    return;
  }
  showAccount(me);
  // A session that ends while the page is open (expired, logged out elsewhere, password
  // changed): back to the login form, with the server's reason.
  window.addEventListener("virtlab:unauthorized", (e) => {
    if (document.body.dataset.auth !== "out") showLogin(e.detail);
  });
  const live = document.getElementById("live");
  events.onStatus((status) => {
    live.textContent = LIVE[status] || status;
    live.dataset.status = status;
  });
  const count = document.getElementById("console-count");
  consoles.onChange(() => {
    const n = consoles.count();
    count.textContent = n ? String(n) : "";
    count.setAttribute("aria-label", n ? `${n} open` : "");
  });
  events.start();
  startRouter(document.getElementById("main"), "/labs", (r) => {
    document.body.classList.toggle("bare", r.bare);
    for (const link of document.querySelectorAll("[data-nav]")) {
      if (link.dataset.nav === r.nav) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  });
}

start();
