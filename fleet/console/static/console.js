// bitnet-edge fleet console: live updates over server-sent events, relative times, confirmations.
// No framework, no build step; the page works without it (forms post, pages reload).
(function () {
  "use strict";
  // The only HTML this script inserts is the fragment the server rendered (and escaped) for this
  // page; the Content-Security-Policy requires that to pass through this one Trusted Types policy.
  var policy = window.trustedTypes ? window.trustedTypes.createPolicy("bne-console", {
    createHTML: function (html) { return html; }
  }) : { createHTML: function (html) { return html; } };

  function ago(iso) {
    var s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) { return Math.round(s) + " s ago"; }
    if (s < 3600) { return Math.round(s / 60) + " min ago"; }
    if (s < 172800) { return Math.round(s / 3600) + " h ago"; }
    return new Date(iso).toISOString().slice(0, 16).replace("T", " ");
  }

  function relativeTimes(root) {
    var times = root.querySelectorAll("time[data-ago]");
    for (var i = 0; i < times.length; i++) {
      times[i].textContent = ago(times[i].getAttribute("datetime"));
    }
  }

  var live = document.getElementById("live");
  var dot = document.getElementById("live-state");
  function state(s) { if (dot) { dot.setAttribute("data-state", s); } }

  if (live && window.EventSource) {
    var source = new EventSource("/events?view=" + encodeURIComponent(live.getAttribute("data-live")));
    state("connecting");
    source.onopen = function () { state("live"); };
    source.onerror = function () { state(source.readyState === EventSource.CLOSED ? "off" : "reconnecting"); };
    source.addEventListener("update", function (e) {
      var data = JSON.parse(e.data);
      if (typeof data.html === "string") {
        live.innerHTML = policy.createHTML(data.html);
        relativeTimes(live);
        live.setAttribute("data-updates", String(Number(live.getAttribute("data-updates") || "0") + 1));
      }
      state("live");
    });
  }

  document.addEventListener("submit", function (e) {
    var question = e.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { e.preventDefault(); }
  });

  relativeTimes(document);
  window.setInterval(function () { relativeTimes(document); }, 5000);
}());
