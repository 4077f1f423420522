// Logging in and out. The server keeps the session in an HttpOnly cookie (SameSite=Strict):
// the page never sees the token, fetch and WebSockets to this server carry it by themselves.
//
// At start the page asks /api/me: a 401 shows the login form instead of the app. A 401 from
// any later request (the session ended) shows the form again, with the server's reason.

import { ApiError, get, post } from "./api.js";
import { h } from "./dom.js";

/** Who is logged in ({name, role, via}), or null when the server says 401. */
export async function whoAmI() {
  try {
    return await get("/api/me");
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) return null;
    throw exc;
  }
}

/** Replace the page with the login form; a successful login reloads the page. */
export function showLogin(reason = "") {
  document.body.dataset.auth = "out";
  document.body.classList.add("logged-out");
  const main = document.getElementById("main");
  const error = h("p", { class: "error", id: "login-error", role: "alert" }, reason);
  const name = h("input", {
    id: "login-name", name: "username", autocomplete: "username", required: true,
    autocapitalize: "none", spellcheck: "false", placeholder: " ",
  });
  const password = h("input", {
    id: "login-password", name: "password", type: "password",
    autocomplete: "current-password", required: true, placeholder: " ",
  });
  const submit = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h(
    "form",
    { class: "login", id: "login-form", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in to virtlab"),
    h("label", { for: "login-name" }, "User name"),
    name,
    h("label", { for: "login-password" }, "Password"),
    password,
    error,
    submit,
    h(
      "p",
      { class: "muted small" },
      "The first user is admin; its password was printed once when the server first started.",
    ),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    error.textContent = "";
    try {
      await post("/api/login", { name: name.value.trim(), password: password.value, kind: "session" });
      location.reload();
    } catch (exc) {
      error.textContent = exc.detail || exc.message;
      password.select();
      submit.disabled = false;
    }
  });
  main.replaceChildren(form);
  name.focus();
}

let current = null;

/** Who is logged in ({name, role, via}) once the page has started; null before. Pages use
 * it to offer admin-only actions (the server still decides). */
export function currentUser() {
  return current;
}

export const isAdmin = () => current?.role === "admin";

/** The user's name and a Log out button in the top bar. */
export function showAccount(me) {
  current = me;
  document.body.dataset.auth = "in";
  const box = document.getElementById("account");
  const logout = h("button", { type: "button", class: "link", id: "logout" }, "Log out");
  logout.addEventListener("click", async () => {
    logout.disabled = true;
    try {
      await post("/api/logout");
    } catch {
      // the session may have ended already: the login form follows either way
    }
    location.reload();
  });
  box.replaceChildren(
    h("span", { class: "whoami", title: `role: ${me.role}` }, me.name),
    logout,
  );
  box.hidden = false;
}
