// keyop progress board: follows the supplier's stream and redraws the rows an event changed
// with the hub's own fragments (the same templates and redaction as the page).
(function () {
  "use strict";
  var body = document.body;
  var supplier = body.dataset.supplier;
  var statusEl = document.getElementById("status");
  var table = document.getElementById("order-rows");
  if (!supplier || !table) { return; }
  var base = "/board/s/" + encodeURIComponent(supplier);
  // What tests and `keyop bench board` read: events received and applied, by cursor.
  var board = window.keyopBoard = {
    cursor: body.dataset.cursor, received: 0, applied: 0, appliedAt: {}, arrivedAt: {},
    connected: false,
    seen: []  // [cursor, type] of each message, in order (the most recent SEEN_MAX)
  };
  var SEEN_MAX = 100000;
  var dirty = new Map();   // order -> cursors of the events waiting to be drawn
  var alertsDirty = false;
  var others = [];         // cursors of events that change no row
  var inFlight = 0;        // fragment requests under way (a few overlap: the hub answers
  var MAX_IN_FLIGHT = 3;   // while the page draws)
  var timer = null;
  var request = 0;         // numbers the requests, so an older answer never undoes a newer
  var drawnBy = {};        // order -> number of the request that drew its row last
  var source = null;
  var params = new URLSearchParams(window.location.search);
  var show = params.get("show") || "open";
  var riskOnly = params.get("risk") === "true";
  var query = (params.get("q") || "").toLowerCase();
  var BATCH = 100;

  function setStatus(live) {
    board.connected = live;
    statusEl.textContent = live ? statusEl.dataset.live : statusEl.dataset.off;
    statusEl.className = "status " + (live ? "status-live" : "status-off");
  }

  function fetchHtml(url) {
    return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (r.redirected && r.url.indexOf("/board/login") >= 0) {
        window.location.assign(r.url);  // the session ended
        throw new Error("logged out");
      }
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    });
  }

  function parse(html) {
    var template = document.createElement("template");
    template.innerHTML = html;
    return template.content;
  }

  function wanted(row) {
    if (show === "open" && row.dataset.closed === "closed") { return false; }
    if (show === "closed" && row.dataset.closed !== "closed") { return false; }
    if (riskOnly && ["at_risk", "late", "missed"].indexOf(row.dataset.risk) < 0) { return false; }
    return !query || row.dataset.order.toLowerCase().indexOf(query) >= 0;
  }

  function place(rows, number) {
    rows.forEach(function (tr) {
      var order = tr.dataset.order;
      if ((drawnBy[order] || 0) > number) { return; }
      drawnBy[order] = number;
      var old = document.getElementById(tr.id);
      if (!wanted(tr)) {
        if (old) { old.remove(); }
        return;
      }
      if (old) {
        old.replaceWith(tr);
      } else {
        var empty = table.querySelector(".row.empty");
        if (empty) { empty.remove(); }
        table.insertBefore(tr, table.firstChild);
      }
    });
  }

  function drawRows(orders, number) {
    var chunks = [];
    for (var i = 0; i < orders.length; i += BATCH) { chunks.push(orders.slice(i, i + BATCH)); }
    return Promise.all(chunks.map(function (chunk) {
      var q = chunk.map(function (o) { return "o=" + encodeURIComponent(o); }).join("&");
      return fetchHtml(base + "/rows?" + q).then(function (html) {
        var t0 = performance.now();
        place(Array.prototype.slice.call(parse(html).querySelectorAll("div.row")), number);
        board.drawMs = (board.drawMs || 0) + performance.now() - t0;
        board.draws = (board.draws || 0) + 1;
      });
    }));
  }

  function drawAlerts() {
    return fetchHtml(base + "/alerts").then(function (html) {
      var fresh = parse(html).querySelector("#alerts");
      var old = document.getElementById("alerts");
      if (fresh && old) { old.replaceWith(fresh); }
    });
  }

  function flush() {
    var batch = dirty;
    var alerts = alertsDirty;
    var rest = others;
    others = [];
    dirty = new Map();
    alertsDirty = false;
    timer = null;
    inFlight += 1;
    request += 1;
    var work = [drawRows(Array.from(batch.keys()), request)];
    if (alerts) { work.push(drawAlerts()); }
    Promise.all(work).then(function () {
      var now = Date.now();
      batch.set("", rest);
      batch.forEach(function (cursors) {
        cursors.forEach(function (c) { board.appliedAt[c] = now; board.applied += 1; });
      });
      inFlight -= 1;
      if (dirty.size || alertsDirty || others.length) { schedule(); }
    }, function () {
      // Not drawn (the hub is away): keep the work and try again shortly.
      batch.forEach(function (cursors, order) {
        dirty.set(order, cursors.concat(dirty.get(order) || []));
      });
      alertsDirty = alertsDirty || alerts;
      others = rest.concat(others);
      setTimeout(function () { inFlight -= 1; schedule(); }, 1000);
    });
  }

  function schedule() {
    if (timer !== null || inFlight >= MAX_IN_FLIGHT) { return; }
    timer = setTimeout(flush, 20);  // gathers a burst of events into one request
  }

  function onMessage(message) {
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    board.cursor = message.lastEventId || board.cursor;
    board.received += 1;
    var type = String(event.type || "");
    board.seen.push([message.lastEventId, type]);
    board.arrivedAt[message.lastEventId] = Date.now();
    if (board.seen.length > SEEN_MAX) { board.seen.splice(0, board.seen.length - SEEN_MAX); }
    var order = event.data && event.data.workOrder && event.data.workOrder.id;
    if (type.indexOf("keyop.alert.") === 0) { alertsDirty = true; }
    if (order) {
      var list = dirty.get(order) || [];
      list.push(message.lastEventId);
      dirty.set(order, list);
    } else {
      others.push(message.lastEventId);  // no row to draw: applied with the next batch
    }
    schedule();
  }

  function connect() {
    // EventSource resends the last id as Last-Event-ID on its own reconnects; a new one
    // (after the hub refused a reconnect) starts from the cursor kept here.
    source = new EventSource(base + "/stream?after=" + encodeURIComponent(board.cursor));
    source.onopen = function () { setStatus(true); };
    source.onmessage = onMessage;
    source.onerror = function () {
      setStatus(false);
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(connect, 1000);
      }
    };
  }

  // Risk changes with time alone (an order goes late when its due time passes): every
  // minute the rows on the page are drawn again.
  setInterval(function () {
    Array.prototype.forEach.call(table.querySelectorAll(".row[data-order]"), function (row) {
      if (!dirty.has(row.dataset.order)) { dirty.set(row.dataset.order, []); }
    });
    schedule();
  }, 60000);

  connect();
})();
