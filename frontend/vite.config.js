// Builds the web UI into the Python package, where `virtlab serve` finds it
// (src/virtlab/web/dist, git-ignored; `make setup` runs this through the frontend stamp).
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "/",
  build: {
    outDir: fileURLToPath(new URL("../src/virtlab/web/dist", import.meta.url)),
    emptyOutDir: true,
    // noVNC uses top-level await (its H.264 probe): ES2022 is the floor.
    target: "es2022",
    chunkSizeWarningLimit: 600,
    rollupOptions: {
      output: {
        // One file per library: each is cached until its version changes.
        manualChunks: {
          cytoscape: ["cytoscape"],
          xterm: ["@xterm/xterm", "@xterm/addon-fit"],
          novnc: ["@novnc/novnc"],
        },
      },
    },
    sourcemap: false,
  },
  server: {
    // `npm run dev` against a server started with `make serve`.
    proxy: {
      "/api": { target: "http://127.0.0.1:8080", ws: true },
    },
  },
});
