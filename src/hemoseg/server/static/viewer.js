// hemoseg viewer. Talks only to the JSON API (/docs), so everything the page
// does another program can do too. Windowing is done here, on raw int16 HU,
// so changing the window never costs a server round trip.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 400;
  const CACHE_SLICES = 96;

  const S = {
    info: null, jobId: null, vol: null, report: null,
    z: 0, level: 40, width: 80, hu: true,
    opacity: 0.45, outline: true, enabled: new Set(), colors: {},
    cache: new Map(), pending: new Map(), lut: null, busy: false, shown: null, lastFiles: [],
  };

  // ---- API helpers ---------------------------------------------------
  async function errorOf(resp) {
    let msg = `HTTP ${resp.status}`;
    try {
      const body = await resp.json();
      if (body && body.message) msg = body.message;
    } catch (_) { /* not JSON */ }
    const err = new Error(msg);
    err.status = resp.status;
    return err;
  }

  async function getJSON(url) {
    const resp = await fetch(url, { cache: "no-store" });
    if (!resp.ok) throw await errorOf(resp);
    return resp.json();
  }

  async function getBytes(url) {
    const resp = await fetch(url, { cache: "no-store" });
    if (!resp.ok) throw await errorOf(resp);
    return resp.arrayBuffer();
  }

  function formatBytes(n) {
    if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(1)} GB`;
    if (n >= 1024 ** 2) return `${Math.round(n / 1024 ** 2)} MB`;
    return `${Math.round(n / 1024)} KB`;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  // ---- status and progress ---------------------------------------------
  function setStatus(text, state) {
    const s = $("status");
    s.textContent = text;
    s.dataset.state = state;
  }

  function setProgress(fraction) {
    $("progress").hidden = fraction === null;
    if (fraction !== null) $("progress-bar").style.width = `${Math.round(fraction * 100)}%`;
  }

  // ---- start-up: classes, colours, presets from the server ---------------
  async function init() {
    try {
      S.info = await getJSON("/api/info");
    } catch (err) {
      setStatus(`Cannot reach the server: ${err.message}`, "error");
      return;
    }
    const info = S.info;
    $("notice-text").textContent = info.notice.replace(/^Research use only\.\s*/, "");
    $("table-notice").textContent = info.notice;
    $("version").textContent = `hemoseg ${info.version}`;
    $("max-upload").textContent = formatBytes(info.limits.max_upload_bytes);
    const m = info.model || {};
    $("model-info").textContent = [m.run && `model ${m.run}`, m.backend && `backend ${m.backend}`]
      .filter(Boolean).join(" \u00b7 ");

    for (const c of info.classes) {
      S.colors[c.label] = hexToRgb(c.color);
      S.enabled.add(c.label);
    }
    buildLegend(null);
    for (const p of info.window_presets) {
      const b = el("button", { type: "button", class: "btn", "data-preset": p.name,
        title: `Level ${p.level} HU, width ${p.width} HU`,
        onclick: () => setWindow(p.level, p.width) },
      el("span", { text: p.name[0].toUpperCase() + p.name.slice(1) }),
      el("small", { text: `${p.level} / ${p.width}` }));
      $("presets").append(b);
    }
    configureWindowControls(true);
    setWindow(40, 80);
  }

  function hexToRgb(hex) {
    const v = parseInt(hex.slice(1), 16);
    return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
  }

  function buildLegend(report) {
    const ul = $("legend");
    ul.replaceChildren();
    for (const c of S.info.classes) {
      const rc = report ? report.classes.find((x) => x.label === c.label) : null;
      const present = rc ? rc.present : null;
      const box = el("input", { type: "checkbox", "data-label": String(c.label) });
      box.checked = S.enabled.has(c.label);
      box.addEventListener("change", () => {
        if (box.checked) S.enabled.add(c.label); else S.enabled.delete(c.label);
        redraw();
      });
      const sw = el("span", { class: "swatch" });
      sw.style.background = c.color;
      const label = el("label", { class: present === false ? "absent" : "" }, box, sw,
        el("span", { text: c.name }));
      if (present === false) label.append(el("span", { class: "tag", text: "none" }));
      ul.append(el("li", {}, label));
    }
  }

  // ---- window / level ----------------------------------------------------
  function configureWindowControls(hu) {
    S.hu = hu;
    const level = $("level"), width = $("width");
    if (hu) {
      Object.assign(level, { min: -1000, max: 3000, step: 1 });
      Object.assign(width, { min: 1, max: 4000, step: 1 });
      $("window-hint").textContent =
        "Drag on the image: left/right changes width, up/down changes level.";
    } else {
      Object.assign(level, { min: 0, max: 255, step: 1 });
      Object.assign(width, { min: 1, max: 510, step: 1 });
      $("window-hint").textContent =
        "8-bit image input: no Hounsfield units, so presets are off and the window only adjusts display.";
    }
    for (const b of $("presets").querySelectorAll("button")) b.disabled = !hu;
  }

  function setWindow(level, width) {
    S.level = Math.round(level);
    S.width = Math.max(1, Math.round(width));
    $("level").value = S.level;
    $("width").value = S.width;
    $("level-out").textContent = S.level;
    $("width-out").textContent = S.width;
    for (const b of $("presets").querySelectorAll("button")) {
      const p = S.info.window_presets.find((x) => x.name === b.dataset.preset);
      b.classList.toggle("active", S.hu && p.level === S.level && p.width === S.width);
    }
    buildLut();
    redraw();
  }

  function buildLut() {
    // value + 32768 -> grey; rebuilt per window change (65536 entries, ~1 ms)
    const lut = S.lut || new Uint8ClampedArray(65536);
    const lo = S.level - S.width / 2, scale = 255 / S.width;
    for (let i = 0; i < 65536; i++) lut[i] = (i - 32768 - lo) * scale;
    S.lut = lut;
  }

  // ---- slice data ----------------------------------------------------------
  function sliceUrl(tpl, z) { return tpl.replace("{z}", String(z)); }

  function getSlice(z) {
    if (S.cache.has(z)) return Promise.resolve(S.cache.get(z));
    if (S.pending.has(z)) return S.pending.get(z);
    const job = S.jobId, v = S.vol;
    const p = Promise.all([getBytes(sliceUrl(v.slice_image_url, z)),
      getBytes(sliceUrl(v.slice_labels_url, z))]).then(([img, lab]) => {
      S.pending.delete(z);
      const s = { img: new Int16Array(img), lab: new Uint8Array(lab) };
      if (job === S.jobId) {
        S.cache.set(z, s);
        while (S.cache.size > CACHE_SLICES) S.cache.delete(S.cache.keys().next().value);
      }
      return s;
    }, (err) => { S.pending.delete(z); throw err; });
    S.pending.set(z, p);
    return p;
  }

  async function showSlice(z) {
    if (!S.vol) return;
    const n = S.vol.shape_zhw[0];
    z = Math.max(0, Math.min(n - 1, z));
    S.z = z;
    $("slice").value = z;
    $("slice-out").textContent = `${z + 1} / ${n}`;
    let s;
    try {
      s = await getSlice(z);
    } catch (err) {
      setStatus(`Cannot load slice ${z + 1}: ${err.message}`, "error");
      return;
    }
    if (S.z !== z) return; // the user moved on while this slice loaded
    S.shown = s;
    redraw();
    for (const d of [1, -1, 2, -2, 3]) {
      const k = z + d;
      if (k >= 0 && k < n) getSlice(k).catch(() => {});
    }
  }

  // ---- drawing -------------------------------------------------------------
  function redraw() {
    if (!S.shown || !S.vol) return;
    const [, h, w] = S.vol.shape_zhw;
    const { img, lab } = S.shown;
    const base = $("image"), over = $("overlay");
    for (const c of [base, over]) {
      if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    }
    const bctx = base.getContext("2d");
    const bd = bctx.createImageData(w, h), px = bd.data, lut = S.lut;
    for (let i = 0, j = 0; i < img.length; i++, j += 4) {
      const g = lut[img[i] + 32768];
      px[j] = g; px[j + 1] = g; px[j + 2] = g; px[j + 3] = 255;
    }
    bctx.putImageData(bd, 0, 0);

    const octx = over.getContext("2d");
    const od = octx.createImageData(w, h), op = od.data;
    const fill = Math.round(255 * S.opacity);
    const edge = Math.min(255, 2 * fill + 64); // outlines stay crisp at low opacity
    if (fill > 0) {
      for (let y = 0, i = 0; y < h; y++) {
        for (let x = 0; x < w; x++, i++) {
          const k = lab[i];
          if (k === 0 || !S.enabled.has(k)) continue;
          const rgb = S.colors[k] || [255, 0, 255];
          const border = S.outline && (x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
            lab[i - 1] !== k || lab[i + 1] !== k || lab[i - w] !== k || lab[i + w] !== k);
          const j = i * 4;
          op[j] = rgb[0]; op[j + 1] = rgb[1]; op[j + 2] = rgb[2];
          op[j + 3] = border ? edge : fill;
        }
      }
    }
    octx.putImageData(od, 0, 0);
    updateCorners();
  }

  function updateCorners() {
    if (!S.vol) return;
    const n = S.vol.shape_zhw[0];
    const names = (S.vol.labels_per_slice[S.z] || [])
      .map((k) => S.info.classes.find((c) => c.label === k))
      .filter(Boolean).map((c) => c.name);
    $("info-tl").textContent = `Slice ${S.z + 1} / ${n}` + (names.length ? `\n${names.join(", ")}` : "");
    $("info-tr").textContent = S.hu ? `W ${S.width}  L ${S.level} HU` : `W ${S.width}  L ${S.level}`;
    const sp = S.vol.spacing_mm;
    $("info-bl").textContent = sp ? `${S.vol.shape_zhw[2]} \u00d7 ${S.vol.shape_zhw[1]} px \u00b7 ` +
      `${sp[1].toFixed(2)} mm pixels \u00b7 ${sp[0].toFixed(2)} mm slices`
      : `${S.vol.shape_zhw[2]} \u00d7 ${S.vol.shape_zhw[1]} px \u00b7 spacing unknown`;
  }

  // ---- results ---------------------------------------------------------
  function fmtMl(ml) {
    if (ml === null || ml === undefined) return null;
    return `${ml.toFixed(2)} mL`;
  }

  function buildTable(report) {
    const tbody = $("volume-table").tBodies[0], tfoot = $("volume-table").tFoot;
    tbody.replaceChildren();
    tfoot.replaceChildren();
    for (const c of report.classes) {
      const info = S.info.classes.find((x) => x.label === c.label);
      const sw = el("span", { class: "swatch" });
      sw.style.background = info ? info.color : "#888";
      const ml = fmtMl(c.volume_ml);
      // without spacing the reason is spelled out where there is a finding;
      // repeating it on every empty row would bury the table
      const vol = ml !== null ? el("td", { class: "num", text: ml })
        : c.present ? el("td", { class: "num na", text: c.volume_note || "unavailable" })
          : el("td", { class: "num", text: "\u2013", title: c.volume_note || "" });
      const tr = el("tr", { class: c.present ? "present" : "absent", "data-class": c.class },
        el("td", {}, el("span", { class: "name" }, sw, el("span", { text: c.class }))),
        vol, el("td", { class: "num", text: String(c.slices_involved) }));
      if (c.present && c.max_area_slice !== null) {
        tr.title = `Show slice ${c.max_area_slice + 1} (largest cross-section)`;
        tr.addEventListener("click", () => showSlice(c.max_area_slice));
      }
      tbody.append(tr);
    }
    const t = report.total;
    const tml = fmtMl(t.volume_ml);
    tfoot.append(el("tr", {}, el("td", { text: "Total" }),
      tml !== null ? el("td", { class: "num", text: tml })
        : el("td", { class: "num na", text: t.volume_note || "unavailable" }),
      el("td", {})));
    const sp = report.spacing_mm;
    $("spacing").textContent = sp
      ? `Voxel spacing ${sp.map((v) => +v.toFixed(3)).join(" \u00d7 ")} mm (slice \u00d7 row \u00d7 column).`
      : `Voxel spacing unknown: ${report.spacing_note}. Areas are in pixels.`;
  }

  function buildDownloads(status, report) {
    const box = $("downloads");
    box.replaceChildren();
    const links = status.links;
    const items = [
      ["labels.nii.gz", "Labels (NIfTI)", "PNG/JPG input has no 3-D geometry"],
      ["seg.dcm", "DICOM SEG", report.source === "dicom" ? "no findings to encode" : "DICOM input only"],
      ["report.html", "Report (HTML)", ""],
      ["report.json", "Report (JSON)", ""],
      ["report.csv", "Report (CSV)", ""],
      ["montage.png", "Montage (PNG)", ""],
    ];
    for (const [name, label, why] of items) {
      if (links[name]) {
        const a = el("a", { class: "btn", href: links[name], text: label, "data-file": name });
        if (name === "report.html" || name === "montage.png") {
          a.target = "_blank";
          a.rel = "noopener";
        } else {
          a.setAttribute("download", "");
        }
        box.append(a);
      } else {
        box.append(el("span", { class: "btn disabled", text: label, title: `Not available: ${why}` }));
      }
    }
  }

  function showWarnings(list) {
    const ul = $("warnings");
    ul.replaceChildren(...list.map((w) => el("li", { text: w })));
    $("warnings-card").hidden = list.length === 0;
  }

  function resetView() {
    S.jobId = null; S.vol = null; S.report = null; S.shown = null;
    S.cache.clear(); S.pending.clear();
    for (const id of ["image", "overlay"]) {
      const c = $(id);
      c.getContext("2d").clearRect(0, 0, c.width, c.height);
    }
    $("empty").hidden = false;
    $("slice").disabled = true;
    $("slice-out").textContent = "\u2013";
    for (const id of ["info-tl", "info-tr", "info-bl", "spacing"]) $(id).textContent = "";
    $("volume-table").tBodies[0].replaceChildren(
      el("tr", { class: "placeholder" }, el("td", { colspan: "3", text: "No result yet." })));
    $("volume-table").tFoot.replaceChildren();
    $("downloads").replaceChildren(el("p", { class: "meta", text: "Available when a study is done." }));
    $("delete-btn").hidden = true;
    showWarnings([]);
    buildLegend(null);
  }

  async function loadResult(status) {
    const id = status.id;
    const [vol, report] = await Promise.all([
      getJSON(status.links.volume), getJSON(status.links.report)]);
    if (S.jobId !== id) return;
    S.vol = vol;
    S.report = report;
    configureWindowControls(vol.value_space === "hounsfield");
    const n = vol.shape_zhw[0];
    $("slice").max = n - 1;
    $("slice").disabled = false;
    $("empty").hidden = true;
    buildLegend(report);
    buildTable(report);
    buildDownloads(status, report);
    showWarnings([...(status.warnings || []), ...(report.warnings || [])]);
    // open on the largest lesion, else the middle slice
    const present = report.classes.filter((c) => c.present);
    present.sort((a, b) => b.max_area - a.max_area);
    const z0 = present.length ? present[0].max_area_slice : Math.floor(n / 2);
    S.level = vol.default_window.level; S.width = vol.default_window.width;
    setWindow(vol.default_window.level, vol.default_window.width);
    await showSlice(z0);
    const secs = status.finished && status.started ? ` in ${(status.finished - status.started).toFixed(1)} s` : "";
    setStatus(present.length
      ? `Done${secs}: ${n} slices, findings in ${present.length} class${present.length > 1 ? "es" : ""}.`
      : `Done${secs}: ${n} slices, no hemorrhage detected.`, "done");
  }

  // ---- upload and polling ------------------------------------------------
  // A flat PACS export holds several series (brain and bone kernels, say): the
  // server lists them, the reader picks one, and the same files go up again.
  function showSeriesChoice(choices) {
    const box = $("series-choice");
    box.replaceChildren(...choices.map((c) => el("button", {
      type: "button", class: "btn", "data-series": c.series,
      text: `Series ${c.series}${c.description ? ` \u2013 ${c.description}` : ""} (${c.images} images)`,
      onclick: () => upload(S.lastFiles, c.series),
    })));
    box.hidden = false;
  }

  function upload(files, series = null) {
    if (S.busy || !files.length || !S.info) return;
    S.lastFiles = Array.from(files);
    $("series-choice").hidden = true;
    const total = Array.from(files).reduce((a, f) => a + f.size, 0);
    const limit = S.info.limits.max_upload_bytes;
    if (total > limit) {
      setStatus(`The selection is ${formatBytes(total)}; this server accepts up to ${formatBytes(limit)} per study.`, "error");
      return;
    }
    resetView();
    S.busy = true;
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", series === null ? "/api/jobs" : `/api/jobs?series=${encodeURIComponent(series)}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      setProgress(0.25 * e.loaded / e.total);
      setStatus(`Uploading ${formatBytes(e.loaded)} of ${formatBytes(e.total)}\u2026`, "uploading");
    };
    xhr.onload = () => {
      const body = xhr.response || {};
      if (xhr.status === 202) {
        S.jobId = body.id;
        $("delete-btn").hidden = false;
        poll(body.id);
        return;
      }
      S.busy = false;
      setProgress(null);
      if (xhr.status === 422 && Array.isArray(body.series) && body.series.length) {
        setStatus(body.error === "several_series"
          ? `This upload holds ${body.series.length} image series. Choose the one to segment:`
          : body.message, body.error === "several_series" ? "idle" : "error");
        showSeriesChoice(body.series);
        return;
      }
      let msg = body.message || `upload failed (HTTP ${xhr.status})`;
      const retry = xhr.getResponseHeader("Retry-After");
      if ((xhr.status === 429 || xhr.status === 503) && retry) msg += ` (about ${retry} s)`;
      setStatus(msg, "error");
    };
    xhr.onerror = () => {
      S.busy = false;
      setProgress(null);
      setStatus("Upload failed: the connection was closed (is the server running, and is the study within its size limit?)", "error");
    };
    setProgress(0);
    setStatus("Uploading\u2026", "uploading");
    xhr.send(form);
  }

  async function poll(id) {
    let st;
    try {
      st = await getJSON(`/api/jobs/${id}`);
    } catch (err) {
      S.busy = false;
      setProgress(null);
      setStatus(`Lost the job: ${err.message}`, "error");
      return;
    }
    if (S.jobId !== id) return;
    setProgress(0.25 + 0.75 * st.progress);
    if (st.status === "queued") {
      setStatus(`Queued${st.queue_position ? ` (position ${st.queue_position})` : ""}\u2026`, "queued");
    } else if (st.status === "running") {
      const text = {
        reading: "Reading the study\u2026",
        segmenting: `Segmenting: slice ${st.slices_done} of ${st.slices_total}`,
        writing: "Measuring volumes and writing results\u2026",
      }[st.stage] || "Working\u2026";
      setStatus(text, "running");
    } else if (st.status === "done") {
      try {
        await loadResult(st);
      } catch (err) {
        setStatus(`Cannot load the result: ${err.message}`, "error");
      }
      S.busy = false;
      setProgress(null);
      return;
    } else {
      S.busy = false;
      setProgress(null);
      setStatus(st.status === "failed" ? `Failed: ${st.error}` : "Cancelled.", "error");
      return;
    }
    setTimeout(() => poll(id), POLL_MS);
  }

  async function deleteJob() {
    const id = S.jobId;
    if (!id || !window.confirm("Delete this study and its results from the server?")) return;
    try {
      const resp = await fetch(`/api/jobs/${id}`, { method: "DELETE" });
      if (!resp.ok && resp.status !== 404) throw await errorOf(resp);
    } catch (err) {
      setStatus(`Delete failed: ${err.message}`, "error");
      return;
    }
    S.busy = false;
    setProgress(null);
    resetView();
    setStatus("Study deleted from the server.", "idle");
  }

  // ---- input wiring ------------------------------------------------------
  function wire() {
    const input = $("file-input"), drop = $("drop");
    input.addEventListener("change", () => { upload(input.files); input.value = ""; });
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      upload(e.dataTransfer.files);
    });
    $("delete-btn").addEventListener("click", deleteJob);
    $("slice").addEventListener("input", (e) => showSlice(Number(e.target.value)));
    $("prev").addEventListener("click", () => showSlice(S.z - 1));
    $("next").addEventListener("click", () => showSlice(S.z + 1));
    $("level").addEventListener("input", (e) => setWindow(Number(e.target.value), S.width));
    $("width").addEventListener("input", (e) => setWindow(S.level, Number(e.target.value)));
    $("opacity").addEventListener("input", (e) => {
      S.opacity = Number(e.target.value) / 100;
      $("opacity-out").textContent = `${e.target.value}%`;
      redraw();
    });
    $("outline").addEventListener("change", (e) => { S.outline = e.target.checked; redraw(); });

    const vp = $("viewport");
    let wheelAcc = 0;
    vp.addEventListener("wheel", (e) => {
      if (!S.vol) return;
      e.preventDefault();
      wheelAcc += e.deltaY;
      const step = Math.trunc(wheelAcc / 40) || Math.sign(wheelAcc);
      wheelAcc = 0;
      showSlice(S.z + Math.sign(step) * Math.min(Math.abs(step), 5));
    }, { passive: false });
    let drag = null;
    vp.addEventListener("pointerdown", (e) => {
      if (!S.vol || e.button !== 0) return;
      vp.setPointerCapture(e.pointerId);
      drag = { x: e.clientX, y: e.clientY, level: S.level, width: S.width };
    });
    vp.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      setWindow(drag.level - dy * drag.width / 200, drag.width * Math.exp(dx / 200));
    });
    const end = () => { drag = null; };
    vp.addEventListener("pointerup", end);
    vp.addEventListener("pointercancel", end);
    document.addEventListener("keydown", (e) => {
      if (!S.vol || e.target.matches("input[type=text], input[type=number], textarea")) return;
      const steps = { ArrowUp: 1, ArrowRight: 1, PageUp: 5, ArrowDown: -1, ArrowLeft: -1, PageDown: -5 };
      if (e.key in steps && !(e.target.matches("input[type=range]"))) {
        e.preventDefault();
        showSlice(S.z + steps[e.key]);
      } else if (e.key === "Home") showSlice(0);
      else if (e.key === "End") showSlice(S.vol.shape_zhw[0] - 1);
    });
  }

  wire();
  init();
})();
