// vqclip gallery. Plain JS, no dependencies. Safety rule: text from a run is only ever assigned with
// textContent or setAttribute (never innerHTML), and links are built from ids/file names that the build
// validated to [A-Za-z0-9._-]. The index is parsed from a JSON data block, never evaluated.
(function () {
  "use strict";

  var data = {};
  try {
    data = JSON.parse(document.getElementById("gallery-data").textContent) || {};
  } catch (e) {
    data = {};
  }
  var base = typeof data.base === "string" ? data.base : "";
  var runs = Array.isArray(data.runs) ? data.runs : [];
  var kiosk = data.kiosk === true;
  var grid = document.getElementById("grid");
  var KNOWN = { finished: 1, interrupted: 1, failed: 1 };
  var SAFE = /^[A-Za-z0-9._-]+$/;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function str(v) { return typeof v === "string" ? v : ""; }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function fmt(n) { return n === null ? "" : n.toLocaleString("en-US"); }
  function href(id, file) {
    return SAFE.test(id) && SAFE.test(file) ? base + id + "/" + file : "#";
  }
  function link(text, url, cls) {
    var a = el("a", cls, text);
    a.href = url;
    return a;
  }

  // "A sunny countryside:100 | roses:-30" -> text pieces with their weights dimmed (text nodes only).
  var PIECE = /^(.*?):(-?\d+(?:\.\d+)?)(?::(-?\d+(?:\.\d+)?))?$/;
  function promptInto(p, prompt) {
    if (!prompt) {
      p.textContent = "(no prompt)";
      p.classList.add("none");
      return;
    }
    var pieces = prompt.split("|");
    for (var i = 0; i < pieces.length; i++) {
      var piece = pieces[i].trim();
      if (i > 0) p.appendChild(el("span", "sep", "|"));
      var m = PIECE.exec(piece);
      if (m && m[1].trim()) {
        p.appendChild(document.createTextNode(m[1].trim()));
        var w = el("span", "w" + (m[2].charAt(0) === "-" ? " neg" : ""), ":" + m[2] + (m[3] ? ":" + m[3] : ""));
        p.appendChild(w);
      } else {
        p.appendChild(document.createTextNode(piece));
      }
    }
  }

  function sizeText(r) {
    var w = num(r.w), h = num(r.h);
    return w && h ? w + "×" + h : "";
  }
  function stepsText(r) {
    var done = num(r.steps), planned = num(r.planned);
    if (done === null && planned === null) return "";
    if (done !== null && planned !== null && done !== planned) return fmt(done) + "/" + fmt(planned) + " steps";
    return fmt(done !== null ? done : planned) + " steps";
  }
  function framesText(r) {
    var n = num(r.frames);
    return n === null ? "" : fmt(n) + (n === 1 ? " frame" : " frames");
  }
  function scoreText(r) { // the CLIP score summary, 0-100 (details.json "score")
    var s = num(r.score);
    return s === null ? "" : "score " + s.toFixed(1);
  }
  function metaText(r) {
    return [str(r.model), sizeText(r), framesText(r), stepsText(r), str(r.seed) ? "seed " + str(r.seed) : "",
      scoreText(r), str(r.batch) ? "batch " + str(r.batch) : "", str(r.date)].filter(Boolean).join(" · ");
  }

  function mediaFor(r, id) {
    var media = el("div", "media");
    var w = num(r.w) || (Array.isArray(r.thumb) ? num(r.thumb[0]) : null);
    var h = num(r.h) || (Array.isArray(r.thumb) ? num(r.thumb[1]) : null);
    if (w && h) media.style.aspectRatio = w + " / " + h;
    var full = href(id, "output.png");
    var thumbOk = Array.isArray(r.thumb) && SAFE.test(id);
    if (r.image === true && (thumbOk || kiosk)) {
      var a = link("", full, "thumb");
      var img = el("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.src = kiosk ? full : base + ".gallery/thumbs/" + id + ".jpg";
      if (thumbOk) {
        img.width = num(r.thumb[0]) || 1;
        img.height = num(r.thumb[1]) || 1;
      }
      img.setAttribute("alt", str(r.prompt));
      a.appendChild(img);
      media.appendChild(a);
    } else {
      media.appendChild(el("div", "noimg", r.image === true ? "image unreadable" : "no image"));
    }
    var engine = str(r.engine);
    if (engine && engine !== "vqgan" && engine !== "animation") {  // animations show their frames already
      var kind = el("span", "engine", engine);
      kind.title = "made by the " + engine + " engine";
      media.appendChild(kind);
    }
    var status = str(r.status);
    if (status && status !== "finished") {
      var badge = el("span", "badge");
      badge.dataset.status = status;
      badge.appendChild(el("i", "dot"));
      badge.appendChild(document.createTextNode(status));
      media.appendChild(badge);
    }
    if (r.video === true && !kiosk) {
      var play = el("button", "play", "▶ Play");
      play.type = "button";
      play.setAttribute("aria-label", num(r.frames) === null ? "Play the progression video" : "Play the animation");
      media.appendChild(play);
    }
    return media;
  }

  function chainFor(r) {
    if (!Array.isArray(r.chain) || r.chain.length < 2) return null;
    var box = el("div", "chain");
    box.appendChild(document.createTextNode("chain"));
    for (var i = 0; i < r.chain.length; i++) {
      var s = r.chain[i] || {};
      var sid = str(s.id);
      if (!SAFE.test(sid)) continue;
      if (box.childNodes.length > 1) box.appendChild(document.createTextNode("→"));
      var a = link(String(num(s.stage) || i + 1), "#run-" + sid, sid === r.id ? "current" : "");
      a.title = (sid === r.id ? "this run · " : "") + "stage " + (num(s.stage) || i + 1) + " · " + sid;
      box.appendChild(a);
    }
    return box;
  }

  function cardFor(r) {
    var id = str(r.id);
    var card = el("article", "card");
    card.id = "run-" + id;
    card.dataset.status = str(r.status);
    card.appendChild(mediaFor(r, id));
    var body = el("div", "body");
    var p = el("p", "prompt");
    promptInto(p, str(r.prompt));
    p.title = str(r.prompt);
    body.appendChild(p);
    if (!kiosk) {
      var meta = el("div", "meta");
      var modelName = el("div", "model", str(r.model));
      modelName.title = str(r.clip) ? str(r.model) + " + " + str(r.clip) : str(r.model);
      meta.appendChild(modelName);
      var facts = el("div", "facts");
      [sizeText(r), framesText(r), stepsText(r), str(r.seed) ? "seed " + str(r.seed) : ""].forEach(function (t) {
        if (t) facts.appendChild(el("span", "", t));
      });
      if (scoreText(r)) {
        var sc = el("span", "score", scoreText(r));
        sc.title = "CLIP score: weighted mean over the prompts with positive weight of 100·max(cos, 0)";
        facts.appendChild(sc);
      }
      meta.appendChild(facts);
      body.appendChild(meta);
      if (str(r.error)) body.appendChild(el("p", "error", str(r.error)));
      var chain = chainFor(r);
      if (chain) body.appendChild(chain);
      var foot = el("div", "foot-row");
      var time = el("time", "", str(r.date));
      if (str(r.iso)) time.setAttribute("datetime", str(r.iso));
      time.title = id;
      foot.appendChild(time);
      var links = el("span", "links");
      links.appendChild(link("details", href(id, "details.json")));
      if (r.video === true) links.appendChild(link(num(r.frames) === null ? "video" : "animation", href(id, "anim.mp4")));
      (Array.isArray(r.inputs) ? r.inputs : []).forEach(function (inp) {
        if (inp && SAFE.test(str(inp.file))) links.appendChild(link(str(inp.label) || "input", href(id, inp.file)));
      });
      foot.appendChild(links);
      body.appendChild(foot);
    }
    card.appendChild(body);
    return card;
  }

  // Cards are created once: the first screenfuls at once, the rest in small batches between frames, so a
  // 2,000-run page paints at once and stays responsive. Filtering only toggles `hidden` (`it.ok` remembers
  // the verdict for cards not created yet).
  var FIRST = 48, BATCH = 150;
  var items = [];
  var byId = {};
  runs.forEach(function (r) {
    if (!r || typeof r !== "object" || !SAFE.test(str(r.id))) return;
    if (kiosk && !(r.image === true && Array.isArray(r.thumb))) return; // a display screen shows pictures
    var it = {
      run: r,
      card: null,
      ok: true,
      index: items.length, // position on the page now (changes with the sort)
      order: items.length, // position in the index: newest first
      hay: [str(r.prompt), str(r.model), str(r.id), str(r.seed), str(r.status), str(r.date)].join(" \u0000 ").toLowerCase(),
    };
    items.push(it);
    byId[r.id] = it;
  });
  var rendered = 0;
  function renderUpTo(n) {
    var frag = document.createDocumentFragment();
    for (; rendered < Math.min(n, items.length); rendered++) {
      var it = items[rendered];
      it.card = cardFor(it.run);
      it.card.hidden = !it.ok;
      frag.appendChild(it.card);
    }
    grid.appendChild(frag);
  }
  function renderRest() {
    renderUpTo(rendered + BATCH);
    if (rendered < items.length) setTimeout(renderRest, 0);
    else document.documentElement.dataset.rendered = "all";
  }
  function card(it) { // the card of an item, creating every card before it if needed
    if (!it.card) renderUpTo(it.index + 1);
    return it.card;
  }

  // Filters
  var q = document.getElementById("q");
  var model = document.getElementById("model");
  var chips = document.getElementById("status");
  var count = document.getElementById("count");
  var nomatch = document.getElementById("nomatch");
  var statusValue = "";

  function apply() {
    var words = q ? q.value.toLowerCase().split(/\s+/).filter(Boolean) : [];
    var m = model ? model.value : "";
    var shown = 0;
    for (var i = 0; i < items.length; i++) {
      var it = items[i];
      var ok = (!m || it.run.model === m) && (!statusValue || it.run.status === statusValue);
      for (var j = 0; ok && j < words.length; j++) ok = it.hay.indexOf(words[j]) !== -1;
      it.ok = ok;
      if (it.card && it.card.hidden === ok) it.card.hidden = !ok;
      if (ok) shown++;
    }
    if (count) {
      count.textContent = shown === items.length
        ? fmt(items.length) + (items.length === 1 ? " run" : " runs")
        : fmt(shown) + " of " + fmt(items.length);
    }
    if (nomatch) nomatch.hidden = shown !== 0 || items.length === 0;
  }
  function setStatus(value) {
    statusValue = value;
    if (!chips) return;
    var buttons = chips.querySelectorAll("button");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].setAttribute("aria-pressed", String(buttons[i].dataset.status === value));
    }
  }
  function reset() {
    if (q) q.value = "";
    if (model) model.value = "";
    setStatus("");
    apply();
  }
  var timer = 0;
  if (q) {
    q.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(apply, 40);
    });
    q.addEventListener("keydown", function (e) { if (e.key === "Escape") { q.value = ""; apply(); } });
  }
  if (model) model.addEventListener("change", apply);
  if (chips) {
    chips.addEventListener("click", function (e) {
      var b = e.target.closest("button");
      if (!b) return;
      setStatus(b.dataset.status || "");
      apply();
    });
  }
  var resetButton = document.getElementById("reset");
  if (resetButton) resetButton.addEventListener("click", reset);

  // Sort: newest first (the index's order) or best CLIP score first (runs without a score last, ties newest
  // first). Every card is created first, then the cards are moved; filters are untouched.
  var sortSelect = document.getElementById("sort");
  function byOrder(a, b) { return a.order - b.order; }
  function byScore(a, b) {
    var x = num(a.run.score), y = num(b.run.score);
    if (x === null || y === null) return x === y ? byOrder(a, b) : (x === null ? 1 : -1);
    return y - x || byOrder(a, b);
  }
  function applySort() {
    renderUpTo(items.length);
    items.sort(sortSelect && sortSelect.value === "score" ? byScore : byOrder);
    var frag = document.createDocumentFragment();
    for (var i = 0; i < items.length; i++) {
      items[i].index = i;
      frag.appendChild(items[i].card);
    }
    grid.appendChild(frag);
  }
  if (sortSelect) sortSelect.addEventListener("change", applySort);

  // Video on demand: nothing is fetched until Play is pressed.
  grid.addEventListener("click", function (e) {
    var play = e.target.closest(".play");
    if (play) {
      var media = play.parentNode;
      var card = media.parentNode;
      var it = byId[card.id.slice(4)];
      var existing = media.querySelector("video");
      if (existing) {
        existing.pause();
        existing.removeAttribute("src");
        existing.load();
        existing.remove();
        media.querySelector("a.thumb, .noimg").hidden = false;
        play.textContent = "▶ Play";
      } else if (it) {
        var v = el("video");
        v.preload = "none";
        v.muted = true;
        v.loop = true;
        v.controls = true;
        v.playsInline = true;
        v.src = href(it.run.id, "anim.mp4");
        var still = media.querySelector("a.thumb, .noimg");
        if (still) still.hidden = true;
        media.insertBefore(v, media.firstChild);
        v.play().catch(function () { /* autoplay refusals: the controls remain */ });
        play.textContent = "■ Image";
      }
      return;
    }
    var thumb = e.target.closest("a.thumb");
    if (thumb && !e.ctrlKey && !e.metaKey && !e.shiftKey && e.button === 0) {
      var c = thumb.closest(".card");
      if (c && byId[c.id.slice(4)]) {
        e.preventDefault();
        openBox(byId[c.id.slice(4)]);
      }
    }
  });

  // Lightbox: the full image, prompt and facts; arrows walk the visible cards.
  var box = document.getElementById("lightbox");
  var boxImg = box.querySelector("img");
  var current = null;
  function openBox(it) {
    current = it;
    boxImg.src = href(it.run.id, "output.png");
    boxImg.setAttribute("alt", str(it.run.prompt));
    box.querySelector(".lb-prompt").textContent = str(it.run.prompt) || "(no prompt)";
    box.querySelector(".lb-meta").textContent = metaText(it.run);
    box.hidden = false;
    document.body.style.overflow = "hidden";
  }
  function closeBox() {
    box.hidden = true;
    boxImg.removeAttribute("src");
    document.body.style.overflow = "";
    if (current) card(current).scrollIntoView({ block: "nearest" });
    current = null;
  }
  function step(dir) {
    if (!current) return;
    for (var i = current.index + dir; i >= 0 && i < items.length; i += dir) {
      if (items[i].ok && items[i].run.image === true) { openBox(items[i]); return; }
    }
  }
  box.querySelector(".lb-close").addEventListener("click", closeBox);
  box.querySelector(".lb-prev").addEventListener("click", function () { step(-1); });
  box.querySelector(".lb-next").addEventListener("click", function () { step(1); });
  box.addEventListener("click", function (e) { if (e.target === box) closeBox(); });
  document.addEventListener("keydown", function (e) {
    if (!box.hidden) {
      if (e.key === "Escape") closeBox();
      else if (e.key === "ArrowLeft") step(-1);
      else if (e.key === "ArrowRight") step(1);
      return;
    }
    if (e.key === "/" && q && document.activeElement !== q) {
      e.preventDefault();
      q.focus();
    }
  });

  // Lineage links (#run-<id>): show the target even if filters hide it, then point at it.
  function reveal() {
    var hash = location.hash;
    if (hash.indexOf("#run-") !== 0) return;
    var it = byId[hash.slice(5)];
    if (!it) return;
    if (!it.ok) reset();
    var target = card(it);
    target.scrollIntoView({ block: "center" });
    target.classList.add("flash");
    setTimeout(function () { target.classList.remove("flash"); }, 1600);
  }
  window.addEventListener("hashchange", reveal);
  apply();
  renderUpTo(FIRST);
  reveal();
  setTimeout(renderRest, 0);
})();
