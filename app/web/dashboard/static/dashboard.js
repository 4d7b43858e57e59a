// Offer Engine ops dashboard: polls /dashboard/data.json and redraws the three tables in place;
// hold countdowns tick client-side against the server's clock. No framework, no build step.
// Every value from the server goes in through textContent, never as HTML.
(function () {
  "use strict";
  var script = document.currentScript;
  var dataUrl = script.getAttribute("data-url");
  var pollMs = parseInt(script.getAttribute("data-poll-ms"), 10) || 1000;
  var clockOffset = 0; // server time minus browser time, ms
  var polls = 0;
  var inFlight = false;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  function td(text, className) { return el("td", { text: text == null ? "" : String(text), className: className || "" }); }

  function replaceRows(tableId, rows, emptyText, columns) {
    var body = document.querySelector("#" + tableId + " tbody");
    var fragment = document.createDocumentFragment();
    if (!rows.length) fragment.appendChild(el("tr", { className: "empty" }, [el("td", { text: emptyText, colspan: String(columns) })]));
    rows.forEach(function (row) { fragment.appendChild(row); });
    body.replaceChildren(fragment);
  }

  function bar(deal) {
    var node = el("div", { className: "bar", title: "sold / reserved / available" });
    if (deal.quantity > 0) {
      ["sold", "reserved", "available"].forEach(function (part) {
        var span = el("span", { className: part });
        span.style.width = (100 * deal[part] / deal.quantity) + "%";
        node.appendChild(span);
      });
    }
    return node;
  }

  function dealRow(deal) {
    var title = td(deal.title, "title");
    if (deal.sold_out) title.appendChild(el("span", { className: "badge", text: "sold out" }));
    var window_ = el("td", { className: "window" }, [
      el("span", { className: "window-" + deal.window, text: deal.window.replace("_", " "), title: (deal.starts_at || "") + " – " + (deal.ends_at || "") }),
    ]);
    var row = el("tr", { "data-deal-id": String(deal.id), className: deal.sold_out ? "sold-out" : "" }, [
      title,
      window_,
      td(deal.quantity, "num quantity"),
      td(deal.available, "num available"),
      td(deal.reserved, "num reserved"),
      td(deal.sold, "num sold"),
      td(deal.active_holds, "num holds"),
      td(deal.waitlist_waiting, "num waiting"),
      td(deal.waitlist_offered, "num offered"),
      el("td", { className: "bar-col" }, [bar(deal)]),
    ]);
    return row;
  }

  function holdRow(hold) {
    return el("tr", { "data-purchase-id": hold.purchase_id, "data-ends-at": String(hold.ends_at_ms) }, [
      td(hold.purchase_id, "mono"),
      td(hold.deal_title || hold.deal_id),
      td(hold.units, "num"),
      td("…", "num time-left"),
    ]);
  }

  function purchaseRow(p) {
    var state = el("td", { className: "state" }, [el("span", { className: "state-" + p.fulfillment_state, text: p.fulfillment_state })]);
    return el("tr", { "data-purchase-id": p.id }, [
      td(p.id, "mono"),
      td(p.deal_title || p.deal_id),
      td(p.quantity, "num"),
      state,
      td(p.payment_state),
      td(p.user_id || ""),
      td(p.created_at, "mono"),
    ]);
  }

  function cartRow(cart) {
    var state = el("td", { className: "state" }, [el("span", { className: "state-" + cart.state, text: cart.state })]);
    return el("tr", { "data-cart-id": cart.id }, [
      td(cart.id, "mono"),
      state,
      td(cart.items, "num"),
      td(cart.units, "num"),
      td(cart.user_id || ""),
      td(cart.reserved_until || "", "mono"),
    ]);
  }

  function render(data) {
    clockOffset = data.now_ms - Date.now();
    replaceRows("deals", data.deals.map(dealRow), "No deals yet.", 10);
    replaceRows("carts", (data.carts || []).map(cartRow), "No carts yet.", 6);
    replaceRows("holds", data.holds.map(holdRow), "No active holds.", 4);
    replaceRows("purchases", data.purchases.map(purchaseRow), "No purchases yet.", 7);
    document.getElementById("more-deals").hidden = !data.more_deals;
    tick();
  }

  function formatLeft(ms) {
    if (ms <= 0) return "ended";
    var seconds = ms / 1000;
    if (seconds < 60) return seconds.toFixed(1) + " s";
    var whole = Math.floor(seconds);
    return Math.floor(whole / 60) + ":" + String(whole % 60).padStart(2, "0");
  }

  function tick() {
    var now = Date.now() + clockOffset;
    document.querySelectorAll("#holds tr[data-ends-at]").forEach(function (row) {
      var left = parseInt(row.getAttribute("data-ends-at"), 10) - now;
      row.querySelector(".time-left").textContent = formatLeft(left);
      row.classList.toggle("ended", left <= 0);
    });
  }

  function poll() {
    if (inFlight) return;
    inFlight = true;
    fetch(dataUrl, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); throw new Error("signed out"); }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        render(data);
        polls += 1;
        var updated = document.getElementById("updated");
        updated.textContent = "updated " + new Date(data.now_ms).toLocaleTimeString();
        updated.setAttribute("data-polls", String(polls));
        document.getElementById("stale").hidden = true;
      })
      .catch(function () { document.getElementById("stale").hidden = false; })
      .finally(function () { inFlight = false; });
  }

  var initial = document.getElementById("initial-data");
  if (initial) {
    try { clockOffset = JSON.parse(initial.textContent).now_ms - Date.now(); } catch (e) { /* keep 0 */ }
  }
  tick();
  setInterval(tick, 250);
  setInterval(poll, pollMs);
})();
