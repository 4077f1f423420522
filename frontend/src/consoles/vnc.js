// A node's display in noVNC over /api/nodes/{id}/console/vnc (raw RFB in binary frames).

import RFB from "@novnc/novnc";
import { wsUrl } from "../api.js";
import { h } from "../dom.js";

export class VncConsole {
  constructor(node, setStatus) {
    this.node = node;
    this.setStatus = setStatus;
    this.el = h("div", { class: "vnc", role: "application", "aria-label": `VNC console of ${node.name}` });
    this.rfb = null;
  }

  show() {
    if (this.rfb) {
      // Scaling is computed from the element's size, which was 0 while it was hidden.
      this.rfb.scaleViewport = false;
      this.rfb.scaleViewport = true;
      this.rfb.focus({ preventScroll: true });
    }
  }

  connect() {
    this.close();
    this.setStatus("connecting", "Connecting…");
    const rfb = new RFB(this.el, wsUrl(this.node.consoles.vnc.ws), { shared: true, wsProtocols: ["binary"] });
    rfb.scaleViewport = true;
    rfb.resizeSession = false;
    rfb.background = "#0f1720";
    rfb.addEventListener("connect", () => this.setStatus("open", "Connected"));
    rfb.addEventListener("disconnect", (e) => {
      if (this.rfb !== rfb) return;
      this.rfb = null;
      this.setStatus("closed", e.detail.clean ? "Disconnected" : "Connection lost");
    });
    rfb.addEventListener("desktopname", (e) => (this.el.title = e.detail.name));
    this.rfb = rfb;
  }

  sendCtrlAltDel() {
    this.rfb?.sendCtrlAltDel();
  }

  close() {
    const rfb = this.rfb;
    this.rfb = null;
    if (rfb) rfb.disconnect();
  }

  dispose() {
    this.close();
  }
}
