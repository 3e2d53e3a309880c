// The dashboard page: tabs (by URL fragment) and the views they show.

import { KeysView } from "./keys.js";
import { LiveViews } from "./live.js";
import { Playground } from "./playground.js";

const POLL_MS = 1500;

const live = new LiveViews(POLL_MS);
const keys = new KeysView();
const playground = new Playground();
live.onNodes((nodes) => playground.showProgress(nodes));

function showTab() {
  const panels = [...document.querySelectorAll("[data-panel]")];
  const wanted = location.hash.slice(1);
  const tab = panels.some((p) => p.dataset.panel === wanted) ? wanted : "overview";
  for (const panel of panels) panel.hidden = panel.dataset.panel !== tab;
  for (const link of document.querySelectorAll("nav a[data-tab]")) {
    link.classList.toggle("active", link.dataset.tab === tab);
  }
  if (tab === "keys") keys.refresh();
  else keys.hideNewKey();
  if (tab === "playground") playground.refreshModels();
}

window.addEventListener("hashchange", showTab);
showTab();
live.start();
