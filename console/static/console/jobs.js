// Keeps a jobs table's progress bars current without reloading the page: polls the
// console's jobs.json (same-origin, the session's cookie) and updates or adds rows.
(function () {
  "use strict";
  // Fast while a job shown is unfinished, slow otherwise (a new job may still appear).
  var BUSY_MS = 1000, IDLE_MS = 5000;

  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function newRow(job) {
    var row = document.createElement("tr");
    row.id = "job-" + job.kind + "-" + job.id;
    cell(row, job.kind + " #" + job.id);
    cell(row, job.organization + (job.agent ? "/" + job.agent : ""));
    cell(row, job.status, "status");
    var td = cell(row, "");
    var bar = document.createElement("progress");
    bar.max = 100;
    td.appendChild(bar);
    td.appendChild(document.createTextNode(" "));
    var pct = document.createElement("span");
    pct.className = "pct";
    td.appendChild(pct);
    cell(row, job.detail, "detail");
    cell(row, job.created_at.replace("T", " ").slice(0, 19));
    return row;
  }

  function update(table, jobs) {
    var body = table.tBodies[0];
    jobs.forEach(function (job) {
      var row = document.getElementById("job-" + job.kind + "-" + job.id);
      if (!row) {
        var none = body.querySelector("tr.none");
        if (none) none.remove();
        row = newRow(job);
        body.insertBefore(row, body.firstChild);
      }
      row.dataset.status = job.status;
      row.querySelector(".status").textContent = job.status + (job.error ? " (" + job.error + ")" : "");
      row.querySelector("progress").value = job.progress;
      row.querySelector(".pct").textContent = job.progress + "%";
      row.querySelector(".detail").textContent = job.detail;
    });
  }

  function poll(table) {
    fetch(table.dataset.jobsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data) update(table, data.jobs); })
      .catch(function () { /* the next poll tries again */ })
      .finally(function () {
        var busy = table.querySelector('tr[data-status="pending"], tr[data-status="processing"]');
        setTimeout(function () { poll(table); }, busy ? BUSY_MS : IDLE_MS);
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table[data-jobs-url]").forEach(poll);
  });
})();
