// AFS dashboard: times in the viewer's time zone, and the page kept current by polling
// /version and swapping in the page's <main> when the store changed. No inline script
// anywhere (the Content-Security-Policy forbids it); nothing from outside this server.
(function () {
  "use strict";
  var POLL_MS = 3000;
  var format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });

  function localTimes(root) {
    var times = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) continue;
      el.title = el.getAttribute("datetime");
      el.textContent = format.format(when);
      el.classList.add("local");
    }
  }

  var version = document.body.getAttribute("data-version");
  var minute = null;
  var busy = false;

  function refresh() {
    return fetch(location.href, {credentials: "same-origin", cache: "no-store"})
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        var main = document.querySelector("main");
        if (!fresh || !main) return;
        // Keep what the reader opened.
        var open = {};
        main.querySelectorAll("details[open]").forEach(function (d) { open[d.parentNode.id] = true; });
        main.replaceWith(document.adoptNode(fresh));
        fresh.querySelectorAll("details").forEach(function (d) { if (open[d.parentNode.id]) d.open = true; });
        localTimes(fresh);
      });
  }

  function poll() {
    if (busy || document.hidden) return;
    busy = true;
    fetch("/version", {credentials: "same-origin", cache: "no-store"})
      .then(function (answer) { return answer.ok ? answer.json() : null; })
      .then(function (seen) {
        if (!seen) return;
        // The minute too: "quiet for ..." changes with time alone.
        var changed = seen.version !== version || (minute !== null && seen.minute !== minute);
        minute = seen.minute;
        if (changed) return refresh().then(function () { version = seen.version; });
      })
      .catch(function () { /* the server stopped: try again later */ })
      .then(function () { busy = false; });
  }

  localTimes(document);
  var live = document.getElementById("live");
  if (live) live.classList.add("on");
  setInterval(poll, POLL_MS);
})();
