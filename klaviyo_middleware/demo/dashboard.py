"""The demo's live dashboard: what the fake Klaviyo holds, and the spool.

One static page; its script polls ``/_fake-klaviyo/_state`` and
``/_demo/spool`` every second. Everything shown came from visitors, so the
page builds its DOM with ``textContent`` only, never ``innerHTML``.
"""

from __future__ import annotations

DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dashboard · klaviyo_middleware demo</title>
<style>
body{font:15px system-ui;margin:1.5rem auto;max-width:70rem;padding:0 1rem}
table{border-collapse:collapse;width:100%;margin:.4rem 0 1.4rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}.counts span{display:inline-block;margin-right:1.2rem}
.PENDING{color:#a60}.SUBSCRIBED{color:#070}.muted{color:#777}
</style></head><body>
<h1>Dashboard</h1>
<p><a href="/">Back to the forms</a> · updated <span id="updated">never</span></p>
<h2>Spool</h2>
<p class="counts" id="spool"></p>
<table id="dead"><thead><tr><th>Dead letter</th><th>Email</th><th>Error</th></tr></thead>
<tbody></tbody></table>
<h2>Profiles</h2>
<table id="profiles"><thead><tr><th>Email / phone</th><th>Name</th><th>Marketing consent</th>
<th>Lists</th><th>Properties</th></tr></thead><tbody></tbody></table>
<h2>Lists</h2>
<table id="lists"><thead><tr><th>List</th><th>Opt-in</th><th>Members</th></tr></thead>
<tbody></tbody></table>
<h2>Events</h2>
<table id="events"><thead><tr><th>Time</th><th>Metric</th><th>Who</th><th>Value</th>
<th>Properties</th></tr></thead><tbody></tbody></table>
<script>
function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content); else td.textContent = content ?? "";
  row.appendChild(td);
  return td;
}
function fill(id, rows, render) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  if (!rows.length) {
    const row = body.insertRow(), td = cell(row, "nothing yet");
    td.colSpan = 9; td.className = "muted";
  }
  for (const item of rows) render(body.insertRow(), item);
}
async function refresh() {
  const [state, spool] = await Promise.all([
    fetch("/_fake-klaviyo/_state").then(r => r.ok ? r.json() : null).catch(() => null),
    fetch("/_demo/spool").then(r => r.json()).catch(() => null)]);
  if (spool && spool.stats) {
    const box = document.getElementById("spool");
    box.replaceChildren();
    for (const [name, value] of Object.entries(spool.stats)) {
      const span = document.createElement("span");
      span.textContent = name.replaceAll("_", " ") + ": " + (value ?? "-");
      span.dataset.name = name;
      box.appendChild(span);
    }
    fill("dead", spool.dead, (row, d) => {
      cell(row, d.id); cell(row, d.email); cell(row, d.error);
    });
  }
  if (state) {
    const emails = Object.fromEntries(state.profiles.map(
      p => [p.id, p.email || p.phone_number || p.id]));
    const pending = Object.fromEntries(state.pending_confirmations.map(c => [c.profile_id, c]));
    fill("profiles", state.profiles, (row, p) => {
      cell(row, [p.email, p.phone_number].filter(Boolean).join(" "));
      cell(row, [p.first_name, p.last_name].filter(Boolean).join(" "));
      const consent = state.consent[p.id];
      const status = document.createElement("span");
      const channels = consent ? [["email", consent.email_marketing],
                                  ["SMS", consent.sms_marketing]].filter(c => c[1]) : [];
      status.textContent = channels.length
        ? channels.map(c => c[0] + ": " + c[1]).join(", ") : "never subscribed";
      if (channels.length) status.className = channels[0][1];
      const td = cell(row, status);
      if (pending[p.id]) {
        const link = document.createElement("button");
        // The way Klaviyo asks: an email link, or a text message to answer.
        link.textContent = (pending[p.id].channels || ["email"]).includes("email")
          ? "confirm (opt-in email link)" : "confirm (reply YES to the opt-in text)";
        link.onclick = () => fetch("/_fake-klaviyo/_confirm/" + pending[p.id].token,
                                   {method: "POST"}).then(refresh);
        td.append(" ", link);
      }
      cell(row, state.lists.filter(l => l.members.includes(p.id)).map(l => l.id).join(", "));
      cell(row, p.properties ? JSON.stringify(p.properties) : "");
    });
    fill("lists", state.lists, (row, l) => {
      cell(row, l.id + " (" + l.name + ")"); cell(row, l.opt_in_process);
      cell(row, l.members.map(id => emails[id]).join(", "));
    });
    fill("events", state.events.slice().reverse(), (row, e) => {
      cell(row, e.time); cell(row, e.metric); cell(row, emails[e.profile_id]);
      cell(row, e.value == null ? "" : e.value + " " + (e.value_currency || ""));
      cell(row, JSON.stringify(e.properties));
    });
  }
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>
"""
