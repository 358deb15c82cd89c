// vqclip serve: the form (drawn from the server's RunConfig/Animation spec), the queue and live progress
// (server-sent events), and actions on the live gallery. Text from runs is only ever set with textContent.
"use strict";
(function () {
  var STORE = "vqclip.serve.form.v1";
  var spec = null, state = { mode: "generate", parent: null, base: null, images: { init_image: null, image_prompts: [] } };
  var byName = {}, lastPreview = {}, checkTimer = null;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function api(method, url, body, raw) {
    var opts = { method: method, headers: {}, credentials: "same-origin" };
    if (raw) { opts.body = raw; opts.headers["Content-Type"] = raw.type || "application/octet-stream"; }
    else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
    return fetch(url, opts).then(function (r) {
      if (r.status === 204) return {};
      return r.json().catch(function () { return { error: "HTTP " + r.status }; }).then(function (data) {
        if (!r.ok) { var e = new Error(data.error || ("HTTP " + r.status)); e.fields = data.fields || {}; throw e; }
        return data;
      });
    });
  }

  // ------------------------------------------------------------------------------------------------ form
  function inputFor(f) {
    var input;
    if (f.name === "seed") {
      var box = el("div", "seed");
      var mode = el("select"); mode.id = "seed-mode";
      [["random", "random"], ["fixed", "fixed"], ["last", "reuse last"]].forEach(function (o) {
        var opt = el("option", "", o[1]); opt.value = o[0]; mode.appendChild(opt);
      });
      input = el("input"); input.type = "number"; input.min = "0"; input.step = "1"; input.id = "f-seed";
      input.placeholder = "random";
      mode.addEventListener("change", function () { seedMode(mode.value); changed(); });
      box.appendChild(mode); box.appendChild(input);
      return { node: box, input: input };
    }
    if (f.widget) return imageInput(f);
    if (f.type === "boolean" && f.nullable) {
      input = el("select");
      [["", "auto"], ["true", "yes"], ["false", "no"]].forEach(function (o) {
        var opt = el("option", "", o[1]); opt.value = o[0]; input.appendChild(opt);
      });
    } else if (f.type === "boolean") {
      input = el("input"); input.type = "checkbox";
    } else if (f.choices) {
      input = el("select");
      f.choices.forEach(function (c) { var opt = el("option", "", c); opt.value = c; input.appendChild(opt); });
    } else if (f.type === "integer" || f.type === "number") {
      input = el("input"); input.type = "number";
      input.step = f.type === "integer" ? "1" : "any";
      if (f.min !== undefined) input.min = f.min;
      if (f.max !== undefined) input.max = f.max;
      if (f.nullable) input.placeholder = "auto";
    } else if (f.type === "array") {
      input = el("textarea"); input.rows = 2; input.placeholder = "one per line";
    } else if (f.name === "prompt") {
      input = el("textarea"); input.rows = 3; input.placeholder = "A sunny countryside:100 | wild flowers:30 | roses:-30";
    } else {
      input = el("input"); input.type = "text";
      if (f.suggest && f.suggest.length) {
        var list = el("datalist"); list.id = "dl-" + f.name;
        f.suggest.forEach(function (s) { var o = el("option"); o.value = s; list.appendChild(o); });
        document.body.appendChild(list);
        input.setAttribute("list", list.id);
      }
    }
    input.id = "f-" + f.name;
    return { node: input, input: input };
  }

  function imageInput(f) {
    var box = el("div", "images"), file = el("input"), list = el("ul", "thumbs");
    file.type = "file"; file.accept = "image/png,image/jpeg,image/webp"; file.id = "f-" + f.name;
    file.multiple = f.widget === "images";
    file.addEventListener("change", function () {
      Array.prototype.forEach.call(file.files, function (blob) {
        api("POST", "/api/uploads", undefined, blob).then(function (up) {
          var ref = { upload: up.token, label: blob.name + " (" + up.width + "×" + up.height + ")" };
          if (f.widget === "images") state.images.image_prompts.push(ref); else state.images.init_image = ref;
          drawImages(); changed();
        }).catch(function (e) { fieldError(f.name, e.message); });
      });
      file.value = "";
    });
    box.appendChild(file); box.appendChild(list);
    list.id = "thumbs-" + f.name;
    return { node: box, input: file };
  }

  function drawImages() {
    ["init_image", "image_prompts"].forEach(function (name) {
      var list = $("thumbs-" + name);
      if (!list) return;
      list.textContent = "";
      var items = name === "init_image" ? (state.images.init_image ? [state.images.init_image] : []) : state.images.image_prompts;
      items.forEach(function (ref, i) {
        var li = el("li", "", ref.label || (ref.run ? "output of " + ref.run : "upload"));
        if (name === "image_prompts") {
          var w = el("input"); w.type = "number"; w.step = "any"; w.value = ref.weight === undefined ? 1 : ref.weight;
          w.title = "weight"; w.className = "weight";
          w.addEventListener("input", function () { ref.weight = parseFloat(w.value); changed(); });
          li.appendChild(w);
        }
        var x = el("button", "link", "remove"); x.type = "button";
        x.addEventListener("click", function () {
          if (name === "init_image") state.images.init_image = null; else state.images.image_prompts.splice(i, 1);
          drawImages(); changed();
        });
        li.appendChild(x); list.appendChild(li);
      });
    });
  }

  function drawForm() {
    [["run", function (f) { return f.group === "main" ? "main-fields" : "more-fields"; }],
     ["animation", function () { return "anim-fields"; }]].forEach(function (part) {
      spec[part[0]].forEach(function (f) {
        var row = el("div", "field"), label = el("label", "", f.label.replace(/^Clip /, "CLIP "));
        var made = inputFor(f);
        label.htmlFor = made.input.id; label.title = f.help;
        row.appendChild(label); row.appendChild(made.node);
        row.appendChild(el("small", "help", f.help));
        var err = el("small", "err"); err.id = "err-" + (part[0] === "animation" ? "a-" : "") + f.name; row.appendChild(err);
        if (part[0] === "animation") made.input.id = "a-" + f.name;
        byName[(part[0] === "animation" ? "a:" : "") + f.name] = { f: f, input: made.input };
        $(part[1](f)).appendChild(row);
        made.input.addEventListener("input", changed);
        made.input.addEventListener("change", changed);
      });
    });
  }

  function read(entry) {
    var f = entry.f, input = entry.input;
    if (f.widget) return undefined;
    if (f.type === "boolean" && !f.nullable) return input.checked;
    var v = input.value;
    if (f.type === "boolean") return v === "" ? null : v === "true";
    if (f.type === "array") return v.split("\n").map(function (s) { return s.trim(); }).filter(Boolean);
    if (v === "") return f.nullable ? null : (f.type === "string" ? "" : undefined);
    if (f.type === "integer") return /^-?\d+$/.test(v.trim()) ? Number(v) : v;
    if (f.type === "number") return isNaN(Number(v)) ? v : Number(v);
    return v;
  }
  function write(entry, v) {
    var f = entry.f, input = entry.input;
    if (f.widget) return;
    if (f.type === "boolean" && !f.nullable) input.checked = !!v;
    else if (f.type === "array") input.value = (v || []).join("\n");
    else input.value = v === null || v === undefined ? "" : String(v);
  }
  function values(prefix) {
    var out = {};
    Object.keys(byName).forEach(function (k) {
      var animPart = k.indexOf("a:") === 0;
      if (animPart !== (prefix === "a:")) return;
      var v = read(byName[k]);
      if (v !== undefined && v !== null) out[byName[k].f.name] = v;
    });
    return out;
  }
  function config() {
    var c = values("");
    if (state.images.init_image) c.init_image = refOf(state.images.init_image);
    c.image_prompts = state.images.image_prompts.map(function (r) {
      var o = refOf(r); if (r.weight !== undefined && !isNaN(r.weight)) o.weight = r.weight; return o;
    });
    if ($("seed-mode").value === "random") delete c.seed;
    return c;
  }
  function refOf(r) { return r.upload ? { upload: r.upload } : { run: r.run }; }
  function setValues(c, anim) {
    Object.keys(byName).forEach(function (k) {
      var animPart = k.indexOf("a:") === 0, src = animPart ? anim : c;
      var name = byName[k].f.name;
      if (src && Object.prototype.hasOwnProperty.call(src, name)) write(byName[k], src[name]);
    });
    if (c && c.seed !== undefined && c.seed !== null) seedMode("fixed");
  }
  function defaults() {
    Object.keys(byName).forEach(function (k) { write(byName[k], byName[k].f.default); });
    state.images = { init_image: null, image_prompts: [] };
    seedMode("random"); drawImages();
  }
  function seedMode(m) {
    $("seed-mode").value = m;
    var s = $("f-seed");
    s.disabled = m !== "fixed";
    if (m === "random") s.value = "";
    if (m === "last") {
      api("GET", "/api/runs").then(function (d) {
        var seed = d.runs.length ? parseInt(d.runs[0].seed, 10) : NaN;
        if (!isNaN(seed)) { s.value = String(seed); s.disabled = false; $("seed-mode").value = "fixed"; save(); }
      });
    }
  }
  function setMode(mode, parent) {
    state.mode = mode; state.parent = parent || null;
    document.querySelectorAll(".mode").forEach(function (b) {
      b.setAttribute("aria-selected", String(b.dataset.mode === (mode === "continue" ? "generate" : mode)));
    });
    $("anim-box").hidden = mode !== "animate";
    $("continue-banner").hidden = mode !== "continue";
    $("continue-id").textContent = parent || "";
    save();
  }

  function save() {
    try {
      localStorage.setItem(STORE, JSON.stringify({ mode: state.mode, parent: state.parent, base: state.base,
        config: values(""), animation: values("a:"), seedMode: $("seed-mode").value, images: state.images }));
    } catch (e) { /* storage full or off: the form simply is not kept */ }
  }
  function restore() {
    var s = null;
    try { s = JSON.parse(localStorage.getItem(STORE) || "null"); } catch (e) { s = null; }
    if (!s || typeof s !== "object") return;
    setValues(s.config || {}, s.animation || {});
    if (s.images && typeof s.images === "object") {
      state.images = { init_image: s.images.init_image || null, image_prompts: Array.isArray(s.images.image_prompts) ? s.images.image_prompts : [] };
    }
    seedMode(s.seedMode === "fixed" ? "fixed" : "random");
    state.base = s.base || null;
    setMode(s.mode === "animate" || s.mode === "continue" ? s.mode : "generate", s.parent);
    drawImages();
  }

  function fieldError(name, text) { var e = $("err-" + name); if (e) e.textContent = text || ""; }
  function clearErrors() {
    document.querySelectorAll(".err").forEach(function (e) { e.textContent = ""; });
    $("form-error").hidden = true;
  }
  function showError(e) {
    clearErrors();
    Object.keys(e.fields || {}).forEach(function (k) { fieldError(k, e.fields[k]); fieldError("a-" + k, e.fields[k]); });
    $("form-error").textContent = e.message; $("form-error").hidden = false;
  }
  function job() {
    if (state.mode === "continue") {
      var c = config(), over = {}, base = state.base || {};
      ["prompt", "steps"].forEach(function (k) { if (c[k] !== undefined && c[k] !== base[k]) over[k] = c[k]; });
      return { kind: "continue", parent: state.parent, config: base.animation ? {} : over,
               frames: base.animation ? (values("a:").frames || null) : null };
    }
    var j = { kind: state.mode, config: config() };
    if (state.mode === "animate") j.animation = values("a:");
    return j;
  }
  function changed() {
    save();
    clearTimeout(checkTimer);
    checkTimer = setTimeout(function () {
      api("POST", "/api/check", job()).then(clearErrors).catch(showError);
    }, 300);
  }
  function submit(run) {
    var j = job(); j.run = run;
    api("POST", "/api/jobs", j).then(function () { clearErrors(); }).catch(showError);
  }

  // ------------------------------------------------------------------------------------------ queue & progress
  function jobItem(j, queued, index, count) {
    var li = el("li", "job"); li.dataset.status = j.status; li.dataset.job = j.id;
    li.appendChild(el("span", "kind", j.kind));
    li.appendChild(el("span", "label", j.label || "(no prompt)"));
    li.appendChild(el("span", "state", j.status + (j.run ? " · " + j.run : "")));
    if (j.error) li.appendChild(el("span", "error", j.error));
    if (queued) {
      [["↑", index - 1, index > 0], ["↓", index + 1, index < count - 1]].forEach(function (m) {
        if (!m[2]) return;
        var b = el("button", "small", m[0]); b.type = "button"; b.title = "move";
        b.addEventListener("click", function () { api("POST", "/api/jobs/" + j.id + "/move", { index: m[1] }); });
        li.appendChild(b);
      });
      var x = el("button", "small remove", "✕"); x.type = "button"; x.title = "remove from the queue";
      x.addEventListener("click", function () { api("DELETE", "/api/jobs/" + j.id); });
      li.appendChild(x);
    }
    return li;
  }
  function onQueue(s) {
    var q = $("queue-list"), h = $("history");
    q.textContent = ""; h.textContent = "";
    s.queue.forEach(function (j, i) { q.appendChild(jobItem(j, true, i, s.queue.length)); });
    s.history.slice(0, 10).forEach(function (j) { h.appendChild(jobItem(j, false)); });
    $("queue-count").textContent = s.queue.length ? "· " + s.queue.length + " waiting" + (s.paused ? " (held)" : "") : "";
    $("resume").hidden = !s.paused;
    $("stop-after").setAttribute("aria-pressed", String(!!s.stop_after));
    $("restored").hidden = !(s.restored > 0 && s.paused && s.queue.length);
    $("restored-text").textContent = s.queue.length + " job(s) kept from the last session are waiting.";
    var r = s.running[0];
    if (r && r.id !== state.current) { $("preview").hidden = true; $("bar").value = 0; }  // a new job: its own preview
    state.current = r ? r.id : null;
    document.body.dataset.running = r ? "yes" : "no";
    $("idle").hidden = !!r || !$("preview").hidden;
    $("now-label").textContent = r ? (r.status === "loading" ? "Loading models for: " : "Running: ") + (r.label || "") : "";
    if (r && r.progress && r.progress.total) onProgress(Object.assign({ job: r.id, run: r.run }, r.progress));
    if (!r) $("stats").textContent = "";
    else if (r.status === "loading") $("stats").textContent = "loading models…";
  }
  function fmt(s) {
    if (s === null || s === undefined || !isFinite(s)) return "…";
    s = Math.round(s);
    return s >= 3600 ? Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min" : s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s";
  }
  function onProgress(p) {
    $("bar").max = p.total || 1; $("bar").value = p.step || 0;
    var rate = p.rate ? (p.rate >= 1 ? p.rate.toFixed(2) + " it/s" : (1 / p.rate).toFixed(2) + " s/it") : "";
    $("stats").textContent = "step " + p.step + " / " + p.total + (p.loss !== null && p.loss !== undefined ? " · loss " + Number(p.loss).toFixed(4) : "") +
      (rate ? " · " + rate : "") + " · " + fmt(p.eta) + " left";
    if (p.preview && lastPreview[p.job] !== p.preview) {
      lastPreview[p.job] = p.preview;
      var img = $("preview");
      img.src = "/api/jobs/" + encodeURIComponent(p.job) + "/preview?v=" + p.preview;
      img.dataset.version = String(p.preview); img.hidden = false; $("idle").hidden = true;
    }
  }
  function onNote(n) {
    var ul = $("notes"); ul.appendChild(el("li", "", n.text));
    while (ul.children.length > 5) ul.removeChild(ul.firstChild);
  }
  function connect() {
    var es = new EventSource("/api/events");
    es.onopen = function () { $("conn").dataset.state = "live"; $("conn").textContent = "live"; };
    es.onerror = function () { $("conn").dataset.state = "lost"; $("conn").textContent = "reconnecting…"; };
    es.addEventListener("queue", function (e) { onQueue(JSON.parse(e.data)); });
    es.addEventListener("progress", function (e) { onProgress(JSON.parse(e.data)); });
    es.addEventListener("job", function () { $("notes").textContent = ""; });
    es.addEventListener("note", function (e) { onNote(JSON.parse(e.data)); });
    es.addEventListener("done", function (e) {
      var d = JSON.parse(e.data);
      if (d.error) onNote({ text: d.error });
      refreshGallery();
    });
  }

  // ------------------------------------------------------------------------------------------------ gallery
  function refreshGallery() { var f = $("gallery"); f.src = "/gallery?t=" + Date.now(); }
  function runAction(action, id) {
    api("GET", "/api/runs/" + encodeURIComponent(id)).then(function (r) {
      clearErrors();
      state.images = { init_image: null, image_prompts: [] };
      setValues(r.config, r.animation || {});
      if (r.seed !== null && r.seed !== undefined) { $("f-seed").value = String(r.seed); seedMode("fixed"); }
      if (action === "load") setMode(r.kind === "animation" ? "animate" : "generate");
      if (action === "continue") {
        state.base = { prompt: r.config.prompt, steps: r.config.steps, animation: r.kind === "animation" };
        setMode("continue", id);
      }
      if (action === "animate") { state.images.init_image = { run: id, label: "output of " + id }; setMode("animate"); }
      drawImages(); changed();
      $("form").scrollIntoView({ behavior: "smooth" });
    }).catch(function (e) { showError(e); });
  }
  function decorate(doc) {
    doc.querySelectorAll("article.card").forEach(function (card) {
      if (card.dataset.vq) return;
      card.dataset.vq = "1";
      var id = card.id.replace(/^run-/, ""), links = card.querySelector(".links");
      if (!links) return;
      [["load", "load these settings"], ["continue", "continue this run"], ["animate", "animate from here"]].forEach(function (a) {
        var b = doc.createElement("a");
        b.href = "#"; b.textContent = a[1]; b.className = "vq-action"; b.dataset.action = a[0];
        b.addEventListener("click", function (ev) { ev.preventDefault(); runAction(a[0], id); });
        links.appendChild(b);
      });
    });
  }
  function hookGallery() {
    var f = $("gallery");
    f.addEventListener("load", function () {
      var doc = f.contentDocument;
      if (!doc) return;
      decorate(doc);
      var grid = doc.getElementById("grid");
      if (grid) new MutationObserver(function () { decorate(doc); }).observe(grid, { childList: true });
    });
  }

  // --------------------------------------------------------------------------------------------- drop a PNG
  function hookDrop() {
    var shade = $("drop"), depth = 0;
    document.addEventListener("dragenter", function (e) { if (e.target.type !== "file") { depth++; shade.hidden = false; } });
    document.addEventListener("dragleave", function () { if (--depth <= 0) { depth = 0; shade.hidden = true; } });
    document.addEventListener("dragover", function (e) { if (e.target.type !== "file") e.preventDefault(); });
    document.addEventListener("drop", function (e) {
      if (e.target.type === "file") return;
      e.preventDefault(); depth = 0; shade.hidden = true;
      var file = e.dataTransfer && e.dataTransfer.files[0];
      if (!file) return;
      api("POST", "/api/parameters", undefined, file).then(function (d) {
        setValues(d.config, {}); setMode("generate"); drawImages(); changed();
        (d.notes || []).forEach(function (t) { onNote({ text: t }); });
      }).catch(showError);
    });
  }

  function init() {
    api("GET", "/api/form").then(function (s) {
      spec = s;
      drawForm(); defaults(); restore();
      document.querySelectorAll(".mode").forEach(function (b) {
        b.addEventListener("click", function () { setMode(b.dataset.mode); changed(); });
      });
      $("continue-cancel").addEventListener("click", function () { setMode("generate"); changed(); });
      $("form").addEventListener("submit", function (e) { e.preventDefault(); submit(true); });
      $("enqueue").addEventListener("click", function () { submit(false); });
      $("reset-form").addEventListener("click", function () { defaults(); setMode("generate"); changed(); });
      [["interrupt", "interrupt"], ["skip", "skip"], ["stop-after", "stop_after"], ["resume", "resume"],
       ["restored-resume", "resume"], ["restored-clear", "clear"]].forEach(function (c) {
        $(c[0]).addEventListener("click", function () { api("POST", "/api/control", { action: c[1] }).then(onQueue); });
      });
      $("refresh-runs").addEventListener("click", refreshGallery);
      document.body.dataset.ready = "yes";
    }).catch(function (e) { $("form-error").textContent = e.message; $("form-error").hidden = false; });
    hookGallery(); hookDrop(); connect();
  }
  init();
})();
