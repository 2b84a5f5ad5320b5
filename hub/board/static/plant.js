// keyop coordinator view: redraws the edge's health every few seconds.
(function () {
  "use strict";
  var slot = document.getElementById("health-slot");
  if (!slot) { return; }
  window.keyopPlant = { refreshed: 0 };
  function refresh() {
    fetch(slot.dataset.url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.redirected && r.url.indexOf("/board/login") >= 0) { window.location.assign(r.url); }
        return r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status));
      })
      .then(function (html) {
        var template = document.createElement("template");
        template.innerHTML = html;
        var fresh = template.content.querySelector("#health");
        var old = document.getElementById("health");
        if (fresh && old) { old.replaceWith(fresh); window.keyopPlant.refreshed += 1; }
      })
      .catch(function () { /* the hub is away: the next round tries again */ })
      .then(function () { setTimeout(refresh, 2000); });
  }
  setTimeout(refresh, 2000);
})();
