// The dashboard's behaviour: live counters read from the batch's event stream, the action
// buttons (JSON POSTs behind a confirmation), filters that apply on change, and, when the
// server asks for a bearer token, sign-in and navigation with the token on every request.
(() => {
  "use strict";
  const TOKEN_KEY = "batch-manager-token";
  const TERMINAL = ["COMPLETED", "COMPLETED_WITH_FAILURES", "FAILED", "CANCELLED"];
  let following = null;

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  class SignInNeeded extends Error {}

  // Every request the page makes goes through here: it carries the token when there is one,
  // and a 401 clears the token and asks for it again.
  async function request(url, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("X-Batch-Manager-Dashboard", "1");
    const stored = token();
    if (stored) headers.set("Authorization", "Bearer " + stored);
    const response = await fetch(url, { ...options, headers, credentials: "same-origin" });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      if (stored && !document.getElementById("sign-in")) location.reload();
      throw new SignInNeeded();
    }
    return response;
  }

  // Loads a page with fetch and shows its content in place of the current one.
  async function load(url, push) {
    const response = await request(url);
    const text = await response.text();
    const page = new DOMParser().parseFromString(text, "text/html");
    const main = page.querySelector("main");
    if (!main) throw new Error("not a dashboard page");
    stopFollowing();
    document.querySelector("main").replaceWith(document.adoptNode(main));
    document.title = page.title;
    if (push) history.pushState({}, "", url);
    start();
  }

  function flash(message, isError) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.classList.toggle("error", !!isError);
    box.hidden = !message;
  }

  function stopFollowing() {
    if (following) following.abort();
    following = null;
  }

  function show(snapshot) {
    const panel = document.getElementById("batch");
    if (!panel) return;
    const was = panel.dataset.status;
    panel.dataset.status = snapshot.status;
    for (const [name, value] of snapshot.fields) {
      for (const el of panel.querySelectorAll(`[data-field="${name}"]`)) el.textContent = value;
    }
    for (const el of panel.querySelectorAll('[data-field="status"]')) {
      el.className = "badge " + snapshot.status_class;
      el.textContent = snapshot.status;
    }
    const reason = panel.querySelector('[data-field="failure-reason"]');
    if (reason) reason.hidden = !reason.textContent;
    const bar = panel.querySelector("[role=progressbar]");
    if (bar) {
      const total = Math.max(snapshot.total, 1);
      bar.setAttribute("aria-valuemax", snapshot.total);
      bar.setAttribute("aria-valuenow", snapshot.done);
      bar.setAttribute("aria-valuetext", `${snapshot.done} of ${snapshot.total} items ended`);
      for (const seg of ["succeeded", "failed", "cancelled"]) {
        const el = bar.querySelector(`[data-seg="${seg}"]`);
        if (el) el.style.width = (snapshot[seg] * 100 / total).toFixed(2) + "%";
      }
    }
    for (const button of panel.querySelectorAll("[data-action]")) {
      let applies = button.dataset.when.split(" ").includes(snapshot.status);
      if (button.dataset.action === "redrive") applies = applies && snapshot.failed + snapshot.cancelled > 0;
      button.hidden = !applies;
    }
    return was;
  }

  // Follows the batch's event stream with fetch (EventSource cannot send a token) until its
  // terminal event; the lists below are then loaded again once.
  async function follow(panel) {
    const controller = new AbortController();
    following = controller;
    const note = panel.querySelector("[data-live-note]");
    let delay = 1000;
    while (following === controller && !TERMINAL.includes(panel.dataset.status)) {
      try {
        const response = await request(panel.dataset.events, {
          signal: controller.signal,
          headers: { Accept: "text/event-stream" },
        });
        if (!response.ok || !response.body) throw new Error("events: " + response.status);
        if (note) note.hidden = false;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            dispatch(panel, block);
          }
        }
        delay = 1000;
      } catch (err) {
        if (err instanceof SignInNeeded || controller.signal.aborted) return;
      }
      if (note) note.hidden = true;
      if (following !== controller || TERMINAL.includes(panel.dataset.status)) break;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
    if (note) note.hidden = true;
  }

  function dispatch(panel, block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return;
    if (event === "failure") {
      flash(data.join("\n"), true);
    } else if (event === "batch") {
      const snapshot = JSON.parse(data.join("\n"));
      const was = show(snapshot);
      if (snapshot.terminal && !TERMINAL.includes(was)) {
        load(location.pathname + location.search, false).catch(() => {});
      }
    }
  }

  // The confirmation dialog of an action; resolves to the action's body, or null.
  function confirmAction(button) {
    const dialog = document.getElementById("confirm");
    if (!dialog || typeof dialog.showModal !== "function") {
      return Promise.resolve(window.confirm(button.dataset.confirm) ? {} : null);
    }
    dialog.querySelector("[data-confirm-text]").textContent = button.dataset.confirm;
    const option = dialog.querySelector("[data-redrive-option]");
    option.hidden = button.dataset.action !== "redrive";
    dialog.querySelector("#include-cancelled").checked = false;
    dialog.querySelector("[data-confirm-yes]").textContent = button.textContent.trim();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        if (dialog.returnValue !== "yes") return resolve(null);
        const body = {};
        if (button.dataset.action === "redrive") {
          body.includeCancelled = dialog.querySelector("#include-cancelled").checked;
        }
        resolve(body);
      }, { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  async function act(button) {
    const panel = document.getElementById("batch");
    const body = await confirmAction(button);
    if (!body) return;
    button.disabled = true;
    try {
      const response = await request(`${location.pathname.replace(/\/$/, "")}/${button.dataset.action}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => ({ message: `request failed (${response.status})` }));
      if (!response.ok) {
        const prefix = response.status === 403 ? "Not allowed: " : "Refused: ";
        flash(prefix + answer.message, true);
        return;
      }
      flash(answer.message, false);
      if (answer.batch && panel) show(answer.batch);
      await load(location.pathname + location.search, false);
    } catch (err) {
      if (!(err instanceof SignInNeeded)) flash("The request failed: " + err.message, true);
    } finally {
      button.disabled = false;
    }
  }

  // The sign-in page: a tab that already holds a token (a reload, a typed address) uses it
  // at once; a refused token is cleared, and the form asks again.
  function signIn(form) {
    const input = form.querySelector("input[type=password]");
    const error = form.querySelector("#sign-in-error");
    const here = location.pathname + location.search;
    const refused = (err) => {
      if (!error) return;
      error.textContent = err instanceof SignInNeeded ? "That token was refused." : "Could not load the page: " + err.message;
      error.hidden = false;
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      load(here, false).catch(refused);
    });
    if (token()) load(here, false).catch(() => {});
    else input.focus();
  }

  // Sets up the content of <main>: on first load and after each in-place navigation.
  function start() {
    const signOut = document.getElementById("sign-out");
    if (signOut) signOut.hidden = !token();
    const form = document.getElementById("sign-in");
    if (form) return signIn(form);
    for (const select of document.querySelectorAll("select[data-autosubmit]")) {
      select.addEventListener("change", () => select.form.requestSubmit());
    }
    for (const button of document.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", () => act(button));
    }
    const panel = document.getElementById("batch");
    if (panel) follow(panel);
  }

  // With a token, navigation inside the dashboard goes through fetch so that it carries the
  // token; without one, links and forms are plain.
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[href]");
    if (!link || !token() || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const url = new URL(link.href, location.href);
    if (url.origin !== location.origin) return;
    event.preventDefault();
    load(url.pathname + url.search, true).catch((err) => {
      if (!(err instanceof SignInNeeded)) flash("Could not load the page: " + err.message, true);
    });
  });
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!token() || form.id === "sign-in" || (form.method || "get").toLowerCase() !== "get") return;
    event.preventDefault();
    const url = new URL(form.action, location.href);
    url.search = new URLSearchParams(new FormData(form)).toString();
    load(url.pathname + url.search, true).catch((err) => {
      if (!(err instanceof SignInNeeded)) flash("Could not load the page: " + err.message, true);
    });
  });
  // Signing out forgets the token in this tab; the server then asks for one again.
  document.getElementById("sign-out")?.addEventListener("click", () => {
    stopFollowing();
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  window.addEventListener("popstate", () => {
    if (token()) load(location.pathname + location.search, false).catch(() => {});
  });

  start();
})();
