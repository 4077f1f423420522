// The REST API, as the UI uses it: JSON in and out, errors carrying the server's own words.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

/** The server's reason as written: `detail` is a string, or pydantic's list of problems. */
export function detailText(body, fallback = "") {
  const detail = body && typeof body === "object" ? body.detail : undefined;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
        return where ? `${where}: ${d.msg}` : d.msg;
      })
      .join("; ");
  }
  return fallback;
}

async function errorOf(res) {
  let body = null;
  const text = await res.text();
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  return new ApiError(res.status, detailText(body, text || `${res.status} ${res.statusText}`));
}

export async function request(method, path, body, { headers = {}, signal } = {}) {
  const init = { method, headers: { accept: "application/json", ...headers }, signal };
  if (body !== undefined) {
    if (typeof body === "string" || body instanceof Blob) {
      init.body = body;
    } else {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, `the server could not be reached (${exc.message})`);
  }
  if (!res.ok) {
    const error = await errorOf(res);
    if (res.status === 401 && path !== "/api/login" && path !== "/api/me") {
      window.dispatchEvent(new CustomEvent("virtlab:unauthorized", { detail: error.detail }));
    }
    throw error;
  }
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}

export const get = (path, opts) => request("GET", path, undefined, opts);
export const post = (path, body, opts) => request("POST", path, body, opts);
export const patch = (path, body, opts) => request("PATCH", path, body, opts);
export const del = (path, opts) => request("DELETE", path, undefined, opts);

export const enc = encodeURIComponent;

/** A WebSocket URL for a path of this server. */
export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

/** A fresh import id the server accepts (8 to 64 of [A-Za-z0-9_-]). */
export function newImportId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `ui-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/**
 * Upload `file` as the raw body of PUT /api/images/{name}, reporting upload progress.
 * Resolves with the imported image; rejects with an ApiError holding the server's reason.
 * XMLHttpRequest, not fetch: only it reports upload progress.
 */
export function uploadImage(file, importId, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `/api/images/${enc(file.name)}?import_id=${enc(importId)}`);
    xhr.setRequestHeader("content-type", "application/octet-stream");
    xhr.setRequestHeader("accept", "application/json");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    };
    xhr.upload.onload = () => onProgress(file.size, file.size);
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, detailText(body, xhr.responseText || `${xhr.status}`)));
    };
    // A refusal sent while the body is still going up can end the request for the browser
    // before it reads the answer: ask the import's own record for the reason instead.
    xhr.onerror = () => {
      get(`/api/imports/${enc(importId)}`)
        .then((job) => reject(new ApiError(0, job.error || "the upload was interrupted")))
        .catch(() => reject(new ApiError(0, "the upload was interrupted")));
    };
    xhr.send(file);
  });
}

/** Ask whether a download exists before handing it to the browser (its reason if not). */
export async function probeDownload(path) {
  const ctrl = new AbortController();
  const res = await fetch(path, { signal: ctrl.signal, headers: { range: "bytes=0-0" } });
  if (!res.ok) throw await errorOf(res);
  ctrl.abort();
}
