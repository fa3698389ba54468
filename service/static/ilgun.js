// ilgun pages: live progress and confirmation dialogs. Everything works without this file;
// it only spares the reloads. Polls the JSON API with If-None-Match, so an unchanged job costs a
// 304 with no body. No framework, no CDN.
"use strict";
(function () {
  var FINAL = { succeeded: 1, failed: 1, cancelled: 1 };
  var LABELS = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };

  function seconds(v) {
    if (v === null || v === undefined) return "–";
    v = Math.max(0, Math.round(v));
    if (v < 60) return v + " s";
    if (v < 3600) return Math.floor(v / 60) + " min" + (v % 60 ? " " + (v % 60) + " s" : "");
    return Math.floor(v / 3600) + " h " + Math.floor((v % 3600) / 60) + " min";
  }

  function field(root, name) { return root.querySelector('[data-field="' + name + '"]'); }

  function paint(root, job) {
    var block = root.querySelector(".progress-block") || root;
    block.setAttribute("data-status", job.status);
    var status = field(root, "status");
    if (status) { status.textContent = LABELS[job.status] || job.status; status.className = "badge status-" + job.status; }
    var bar = field(root, "bar");
    if (bar) { bar.value = job.progress; bar.textContent = job.progress + "%"; }
    var pct = field(root, "percent");
    if (pct) pct.textContent = Math.round(job.progress) + "%";
    var queue = field(root, "queue");
    if (queue) queue.textContent = job.status === "queued"
      ? "#" + (job.position || "–") + " in queue, starts in ~" + seconds(job.eta_seconds) : "";
    var message = field(root, "message");
    if (message) message.textContent = job.error ? job.error.message : (job.message || "");
  }

  // GET url with the last ETag; calls onChange(body) only when the answer changed.
  function poller(url, onChange, onStop) {
    var etag = null, stopped = false, timer = null;
    function tick() {
      if (stopped) return;
      if (document.hidden) { timer = setTimeout(tick, 2000); return; }
      var headers = { "Accept": "application/json" };
      if (etag) headers["If-None-Match"] = etag;
      fetch(url, { headers: headers, credentials: "same-origin", cache: "no-store" }).then(function (resp) {
        if (resp.status === 304) return null;
        if (resp.status === 401 || resp.status === 404) { stop(resp.status); return null; }
        if (!resp.ok) return null;
        etag = resp.headers.get("ETag");
        return resp.json();
      }).then(function (body) {
        if (body && body.success) onChange(body.data);
      }).catch(function () { /* the network blinked: try again next tick */ })
        .then(function () { if (!stopped) timer = setTimeout(tick, 1000); });
    }
    function stop(reason) { stopped = true; clearTimeout(timer); if (onStop) onStop(reason); }
    tick();
    return stop;
  }

  // The job page: live progress, then the finished page's body swapped in without a reload.
  function watchJob(section) {
    var stop = poller(section.getAttribute("data-poll-url"), function (job) {
      paint(section, job);
      if (FINAL[job.status]) {
        stop();
        section.setAttribute("data-final", "yes");
        fetch(section.getAttribute("data-page-url"), { credentials: "same-origin", cache: "no-store" })
          .then(function (r) { return r.text(); })
          .then(function (html) {
            var doc = new DOMParser().parseFromString(html, "text/html");
            var body = doc.getElementById("job-body"), fresh = doc.getElementById("job");
            if (body) document.getElementById("job-body").replaceWith(document.adoptNode(body));
            if (fresh) {  // a copy first: adopting a node removes it from the live childNodes list
              var kids = Array.prototype.slice.call(fresh.childNodes).map(function (n) { return document.adoptNode(n); });
              section.replaceChildren.apply(section, kids);
            }
            bindConfirms(document);
          });
      }
    }, function (reason) {
      var message = field(section, "message");
      if (message && reason === 401) message.textContent = "Your session ended: reload the page to sign in again.";
    });
  }

  // The jobs table: rows of unfinished jobs follow the list API (same filters and page).
  function watchList(table) {
    var url = "/api/v1/jobs" + (location.search || "?") + (location.search ? "&" : "") + "page_size=20";
    var stop = poller(url, function (page) {
      var open = 0;
      page.items.forEach(function (job) {
        var row = table.querySelector('tr[data-job-id="' + job.id + '"]');
        if (!row) return;
        paint(row, job);
        var message = row.querySelector(".message");
        if (message) message.textContent = job.error ? job.error.message : (job.message || "");
        if (!FINAL[job.status]) open += 1;
      });
      if (!open) stop();
    });
  }

  function bindConfirms(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      if (form.dataset.bound) return;
      form.dataset.bound = "1";
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); return; }
        var yes = document.createElement("input");
        yes.type = "hidden"; yes.name = "confirmed"; yes.value = "1";
        form.appendChild(yes);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    bindConfirms(document);
    var section = document.getElementById("job");
    if (section && section.getAttribute("data-final") === "no") watchJob(section);
    var table = document.querySelector("table.jobs");
    if (table && table.querySelector('.progress-block[data-status="queued"], .progress-block[data-status="running"]')) watchList(table);
  });
})();
