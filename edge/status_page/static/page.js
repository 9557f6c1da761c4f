// The status page refreshes itself: /api/status every few seconds, the chart every minute.
// No framework, no external request. Without JavaScript the server-rendered page stands.
"use strict";
(function () {
  const refreshS = Number(document.body.dataset.refreshS) || 3;
  const words = {
    producing: "producing", charging: "charging", discharging: "discharging",
    running: "running", using: "using", importing: "from the grid",
    exporting: "to the grid", idle: "idle", unknown: "not known",
  };
  const field = (root, name) => root.querySelector('[data-field="' + name + '"]');
  const setText = (el, text) => { if (el && el.textContent !== text) el.textContent = text; };

  function makeItem(flow) {
    const item = document.createElement("li");
    item.dataset.flow = flow.key;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = flow.label;
    item.append(label);
    for (const name of ["power", "direction"].concat(flow.key === "battery" ? ["soc"] : [])) {
      const span = document.createElement("span");
      span.className = name === "direction" ? "dir" : name;
      span.dataset.field = name;
      item.append(span);
    }
    return item;
  }

  function renderFlows(status) {
    const list = field(document, "flows");
    const shown = Array.from(list.children, (li) => li.dataset.flow).join(",");
    if (shown !== status.flows.map((f) => f.key).join(",")) {
      list.replaceChildren(...status.flows.map(makeItem));
    }
    for (const flow of status.flows) {
      const item = list.querySelector('[data-flow="' + flow.key + '"]');
      if (!item) continue;
      item.dataset.w = flow.power_w === null ? "" : String(flow.power_w);
      item.className = "flow flow-" + flow.key + " dir-" + flow.direction +
        (flow.health === "lost" ? " lost" : "");
      setText(field(item, "power"), flow.text);
      setText(field(item, "direction"), words[flow.direction] || flow.direction);
      if (flow.key === "battery") {
        setText(field(item, "soc"), flow.soc_pct === null ? "–" : Math.round(flow.soc_pct) + " %");
      }
    }
  }

  function renderControl(status) {
    const c = status.control;
    const box = field(document, "control");
    box.className = "control mode-" + c.mode;
    const mode = field(box, "mode");
    mode.dataset.mode = c.mode;
    setText(mode, c.title);
    setText(field(box, "reason"), c.reason);
    const notes = field(box, "notes");
    notes.replaceChildren(...c.notes.map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      return li;
    }));
    setText(field(document, "link"), c.cloud_connected ? "connected" : "not connected");
  }

  function renderFlags(status) {
    const f = status.flags;
    const box = field(document, "flags");
    const text = field(box, "flags-text");
    text.className = "flags-text" + (f.stale ? " stale" : "");
    setText(text, f.text);
    field(box, "flags-notes").replaceChildren(...f.notes.map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      return li;
    }));
  }

  function renderDispatch(status) {
    const box = field(document, "dispatch");
    const d = status.last_dispatch;
    const p = document.createElement("p");
    if (!d) {
      p.textContent = "The cloud has sent no request to this gateway yet.";
    } else {
      const badge = document.createElement("span");
      badge.className = "badge state-" + d.state;
      badge.textContent = d.state;
      p.append(badge, " Received " + d.received_local + ". " + d.text);
    }
    box.replaceChildren(p);
  }

  function renderToday(status) {
    const t = status.today;
    const rows = [
      ["Solar produced", t.pv_kwh], ["House used", t.house_kwh],
      ["Bought from the grid", t.import_kwh], ["Sold to the grid", t.export_kwh],
      ["Battery charged", t.battery_charge_kwh], ["Battery discharged", t.battery_discharge_kwh],
      ["Heat pump used", t.heat_pump_kwh],
    ];
    const dl = document.createElement("dl");
    dl.className = "totals";
    for (const [name, value] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value.toFixed(2) + " kWh";
      dl.append(dt, dd);
    }
    const parts = [dl];
    if (t.cost_text) {
      const p = document.createElement("p");
      p.className = "money";
      const strong = document.createElement("strong");
      strong.textContent = t.cost_text;
      p.append("Grid today: ", strong);
      parts.push(p);
    }
    field(document, "today").replaceChildren(...parts);
  }

  async function refresh() {
    try {
      const response = await fetch("/api/status", { cache: "no-store" });
      if (!response.ok) throw new Error(response.status);
      const status = await response.json();
      renderFlows(status);
      renderControl(status);
      renderFlags(status);
      if (status.update) setText(field(document, "update"), status.update.text);
      renderDispatch(status);
      renderToday(status);
      const measured = field(document, "measured");
      measured.dataset.ts = status.measured || "";
      setText(measured, status.measured_local || "not yet");
      document.body.classList.remove("stale");
    } catch (err) {
      document.body.classList.add("stale");
    }
  }

  async function refreshChart() {
    try {
      const response = await fetch("/api/history.svg?hours=24", { cache: "no-store" });
      if (!response.ok) return;
      field(document, "chart").innerHTML = await response.text();
    } catch (err) { /* keep the chart we have */ }
  }

  const form = document.getElementById("installer-form");
  const output = document.getElementById("installer-output");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const action = event.submitter ? event.submitter.value : "logs";
    const password = document.getElementById("installer-password").value;
    // X-Requested-With: the gateway answers a wrong password without a login dialog
    const headers = {
      Authorization: "Basic " + btoa("installer:" + password),
      "X-Requested-With": "vpp-status-page",
    };
    const request = action === "commission"
      ? fetch("/api/installer/commission", { method: "POST", headers })
      : fetch("/api/installer/logs", { headers });
    try {
      const response = await request;
      const body = await response.json();
      output.textContent = response.ok
        ? (body.lines ? body.lines.join("\n") : JSON.stringify(body, null, 2))
        : body.detail;
    } catch (err) {
      output.textContent = "The gateway did not answer.";
    }
  });

  setInterval(refresh, refreshS * 1000);
  setInterval(refreshChart, 60 * 1000);
})();
