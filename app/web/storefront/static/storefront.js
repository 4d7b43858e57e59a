// The example storefront page (app/web/storefront): a public deal, live.
//
// It reads only the public API (no secret): GET /v1/public/deals/:id once, then the stream
// GET /v1/public/deals/:id/stream through an EventSource. EventSource reconnects by itself when
// a connection drops (after the server's `retry:`), also while the server is down; when the
// server answers a reconnection with an error (a 404, a 503), EventSource gives up, so the page
// starts a new one itself after a pause that doubles up to 15 s. The countdown ticks here, on
// the server's clock as the Date header of the first answer tells it.
(function () {
  "use strict";

  const root = document.getElementById("deal");
  const api = root.dataset.api;
  const $ = (id) => document.getElementById(id);

  let deal = null;
  let clockOffset = 0; // server clock minus ours, ms
  let source = null;
  let pause = 1000;
  let retry = null;

  // -- showing a state ------------------------------------------------------------------------

  function formatPrice(minor, currency) {
    try {
      const format = new Intl.NumberFormat(undefined, { style: "currency", currency });
      const digits = format.resolvedOptions().maximumFractionDigits;
      return format.format(minor / 10 ** digits);
    } catch (error) {
      return `${(minor / 100).toFixed(2)} ${currency}`;
    }
  }

  function clock(ms) {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const days = Math.floor(total / 86400);
    const hours = Math.floor((total % 86400) / 3600);
    const minutes = Math.floor((total % 3600) / 60);
    const seconds = total % 60;
    const two = (n) => String(n).padStart(2, "0");
    const hms = hours || days ? `${two(hours)}:${two(minutes)}:${two(seconds)}` : `${two(minutes)}:${two(seconds)}`;
    return days ? `${days}d ${hms}` : hms;
  }

  // "upcoming", "on-sale" or "ended", from the window and the server's clock (the server's own
  // on_sale arrives on the stream too, but the countdown must not wait for it).
  function phase(now) {
    const starts = deal.starts_at ? Date.parse(deal.starts_at) : null;
    const ends = deal.ends_at ? Date.parse(deal.ends_at) : null;
    if (starts !== null && now < starts) return "upcoming";
    if (ends !== null && now >= ends) return "ended";
    if (starts === null && ends === null && !deal.on_sale) return "ended";
    return "on-sale";
  }

  function renderWindow() {
    if (!deal) return;
    const now = Date.now() + clockOffset;
    const line = $("window");
    const current = phase(now);
    if (current === "upcoming") {
      line.textContent = `On sale in ${clock(Date.parse(deal.starts_at) - now)}`;
    } else if (current === "ended") {
      line.textContent = "Sale ended";
    } else if (deal.ends_at) {
      line.textContent = `Ends in ${clock(Date.parse(deal.ends_at) - now)}`;
    } else {
      line.textContent = "";
    }
    line.dataset.phase = current;
    line.hidden = line.textContent === "";
    $("stock").hidden = deal.sold_out || current === "ended";
    root.dataset.state = deal.sold_out ? "sold-out" : current;
  }

  function show(state) {
    deal = state;
    document.title = state.title;
    $("missing").hidden = true;
    $("title").textContent = state.title;
    $("price").textContent = formatPrice(state.price, state.currency);
    $("price").hidden = false;
    $("available").textContent = String(state.available);
    $("stock-prefix").textContent = state.available <= 20 ? "Only" : "";
    $("sold-out").hidden = !state.sold_out;
    $("waitlist-heading").textContent = state.sold_out ? "Sold out: join the waitlist" : "Join the waitlist";
    renderWindow();
  }

  function showMissing() {
    deal = null;
    root.dataset.state = "missing";
    $("title").textContent = "Not available";
    for (const id of ["price", "window", "stock", "sold-out"]) $(id).hidden = true;
    $("price").textContent = "";
    $("missing").hidden = false;
  }

  function setLive(state, text) {
    $("live").dataset.state = state;
    $("live-text").textContent = text;
  }

  // -- the live stream -------------------------------------------------------------------------

  function connect() {
    source = new EventSource(`${api}/stream`);
    setLive("connecting", "connecting…");
    source.addEventListener("open", () => {
      pause = 1000;
      setLive("live", "live");
    });
    source.addEventListener("stock", (event) => {
      show(JSON.parse(event.data).deal);
      root.dataset.events = String(Number(root.dataset.events) + 1);
      setLive("live", "live");
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The server refused to stream (EventSource will not retry that): we do, later.
        source.close();
        setLive("offline", "offline, trying again…");
        later();
      } else {
        setLive("connecting", "reconnecting…"); // EventSource is on it
      }
    });
  }

  function later() {
    clearTimeout(retry);
    retry = setTimeout(async () => {
      await load(); // why it refused: the deal may have gone (404), or the server is busy
      connect();
    }, pause);
    pause = Math.min(pause * 2, 15000);
  }

  async function load() {
    try {
      const started = Date.now();
      const response = await fetch(api, { cache: "no-store" });
      const date = Date.parse(response.headers.get("Date") || "");
      if (!Number.isNaN(date)) {
        // The Date header has whole seconds: only a clock that is clearly off is corrected.
        const offset = date - (started + Date.now()) / 2;
        clockOffset = Math.abs(offset) > 1500 ? offset : 0;
      }
      if (response.status === 404) {
        showMissing();
      } else if (response.ok) {
        show((await response.json()).deal);
      }
    } catch (error) {
      // The server is unreachable: the stream's reconnection will tell.
    }
  }

  // -- the waitlist form -----------------------------------------------------------------------

  $("waitlist-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = $("waitlist-answer");
    const userId = $("user_id").value.trim();
    answer.dataset.state = "sending";
    answer.textContent = "Sending…";
    try {
      const response = await fetch(`${api}/waitlist`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user_id: userId }),
      });
      let body = null;
      try {
        body = await response.json();
      } catch (error) {
        body = null;
      }
      if (response.ok) {
        // 201: joined now; 200: was waiting already (the same entry).
        const entry = (body && body.entry) || {};
        answer.dataset.state = "ok";
        answer.dataset.entryState = entry.state || "";
        if (entry.state === "waiting" && typeof entry.position === "number") {
          answer.textContent = `You are on the waitlist: number ${entry.position}.`;
        } else if (entry.state === "offered" && entry.offered_until) {
          // Units were there: one is held for the customer at once, for the shop to sell them.
          const until = new Date(Date.parse(entry.offered_until) - clockOffset);
          answer.textContent = `From the waitlist: a unit is held for you until ${until.toLocaleTimeString()}.`;
        } else {
          answer.textContent = "You are on the waitlist.";
        }
      } else {
        answer.dataset.state = "error";
        const why = body && body.message ? body.message : response.statusText;
        answer.textContent = `Could not join the waitlist (${response.status}): ${why}`;
      }
    } catch (error) {
      answer.dataset.state = "error";
      answer.textContent = `Could not join the waitlist: ${error.message}`;
    }
  });

  setInterval(renderWindow, 250);
  load().then(connect);
})();
