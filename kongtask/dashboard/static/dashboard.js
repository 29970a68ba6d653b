// kongtask dashboard: refreshes the live parts of a page in place, and helps with selections.
// No framework, no build step. The server renders (and escapes) every fragment; this
// script only swaps them in, and never while the operator is using what it would replace.
"use strict";

(function () {
  const regions = Array.from(document.querySelectorAll("[data-refresh]"));
  const seconds = Number(document.body.dataset.refreshSeconds) || 5;
  const live = document.getElementById("live");
  const liveText = document.getElementById("live-text");
  const toggle = document.getElementById("live-toggle");
  let paused = false;
  let inFlight = false;

  function setStatus(text, state) {
    if (!live) return;
    liveText.textContent = text;
    live.dataset.state = state;
  }

  // The operator is busy in a region when a field in it has focus or a job in it is ticked:
  // swapping it then would drop their selection or their typing.
  function busy(region) {
    const active = document.activeElement;
    if (active && active !== document.body && region.contains(active) &&
        active.matches("input, select, textarea")) {
      return true;
    }
    return region.querySelector("input[type=checkbox]:checked") !== null;
  }

  async function refresh() {
    if (paused || inFlight || document.hidden) return;
    inFlight = true;
    let held = false;
    try {
      for (const region of regions) {
        if (busy(region)) { held = true; continue; }
        const response = await fetch(region.dataset.refresh, {
          credentials: "same-origin",
          headers: { "Accept": "text/html" },
          cache: "no-store",
        });
        if (!response.ok) throw new Error("HTTP " + response.status);
        region.innerHTML = await response.text();
      }
      const time = new Date().toISOString().slice(11, 19);
      setStatus(held ? "live · held while you select" : "live · " + time + " UTC", "ok");
    } catch (error) {
      setStatus("refresh failed, retrying", "failing");
    } finally {
      inFlight = false;
      updateSelection();
    }
  }

  if (regions.length && live) {
    live.hidden = false;
    setStatus("live", "ok");
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.textContent = paused ? "resume" : "pause";
      setStatus(paused ? "paused" : "live", paused ? "paused" : "ok");
      if (!paused) refresh();
    });
    window.setInterval(refresh, seconds * 1000);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) refresh();
    });
  }

  // ------------------------------------------------------------- selection
  function updateSelection() {
    const counter = document.querySelector("[data-selected-count]");
    if (!counter) return;
    const n = document.querySelectorAll("input[type=checkbox][name=id]:checked").length;
    counter.textContent = n ? "(" + n + " selected)" : "(none selected)";
  }

  document.addEventListener("change", function (event) {
    const target = event.target;
    if (target.matches("[data-select-all]")) {
      const table = target.closest("table");
      for (const box of table.querySelectorAll("input[type=checkbox][name=id]")) box.checked = target.checked;
    }
    updateSelection();
  });

  // Filters leave empty fields out of the address, so it reads as what was asked for.
  document.addEventListener("submit", function (event) {
    if (!event.target.matches("form.filters")) return;
    for (const field of event.target.elements) {
      if (field.name && field.value === "") field.disabled = true;
    }
  });

  // Buttons that destroy something ask first (the server asks again for whole filters).
  document.addEventListener("submit", function (event) {
    const button = event.submitter;
    const question = button && button.dataset.confirm;
    if (!question) return;
    const form = event.target;
    const scope = form.querySelector("input[name=scope]:checked");
    if (scope && scope.value === "filter") return;
    if (!window.confirm(question)) event.preventDefault();
  });

  // An action's outcome arrives in the query string; keep it out of reloads and bookmarks.
  if (window.location.search.indexOf("notice=") !== -1) {
    const url = new URL(window.location.href);
    for (const key of Array.from(url.searchParams.keys())) {
      if (key.indexOf("notice") === 0) url.searchParams.delete(key);
    }
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();
