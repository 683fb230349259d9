// snnrm status page: polls /api/v1/devices, /api/v1/history, /api/v1/stages and /api/v1/events every second and
// /api/v1/heat (the heat map's past) every few seconds, and draws on <canvas>.
//
// No library and no CDN, so the page works offline; everything is drawn by the small helpers below. Data from the
// server only ever reaches the DOM through textContent (never innerHTML). For the browser test, the body carries
// data-updates (successful polls so far) and data-error (the last poll error, if any).
"use strict";

(() => {
  const POLL_MS = 1000;
  const CHIP_GAP = 12; // px between chips on the board grid: the slower inter-chip links
  const LABEL_H = 16; // px band above each chip for its label
  const MAX_CELL = 30; // px: keeps a small mesh from turning into a few huge squares
  const MAX_ROWS = 14; // unhealthy cores listed in the table; the heat map shows all of them
  const MAX_EVENTS = 60; // timeline entries listed (the API keeps more)
  const HEAT_EVERY = 5; // polls between fetches of the heat map's past (it changes per 10 s bucket)
  const HEAT_FRAMES = 12; // past frames drawn in the history strip
  const SIDE_MIN = 320; // px kept beside the mesh for the jobs and the timeline
  const ROW_GAP = 14; // px between the mesh and the side column (.mesh-row gap)
  // Stage outlines: bright hues that stay apart from the heat ramp (blue-green-yellow-red) and from each other.
  const STAGE_COLORS = ["#ff5fd2", "#5ce1ff", "#c6ff5c", "#ffa040", "#a98bff", "#ffffff"];
  const STATE = { HEALTHY: 0, UNKNOWN: 1, UNHEALTHY: 2 };

  const COLORS = {
    grid: "#253040",
    axis: "#8d99a6",
    text: "#dbe2ea",
    bad: "#ef5350",
    softBad: "#f4f6f8", // frame of a core unhealthy by measurement: visible on every ramp colour, red included
    unknown: "#55606c",
    unhealthyFill: "#4a1418",
    chipLine: "#3a4757",
  };
  // Queue-fill ramp: calm blue-green while queues drain, yellow near the knee (0.5), red at saturation (0.8+).
  const RAMP = [
    [0.0, [31, 48, 74]],
    [0.25, [35, 110, 140]],
    [0.5, [63, 170, 120]],
    [0.7, [228, 200, 74]],
    [0.85, [240, 138, 60]],
    [1.0, [232, 65, 58]],
  ];

  // What the heat map can colour cores by: where each value sits on the ramp (0 calm .. 1 alarming), and the
  // legend's marks in ramp position.
  const METRICS = {
    queue_fill: {
      label: "event-queue fill",
      pos: (v) => v,
      marks: [[0, "0"], [0.5, "0.5"], [0.8, "0.8 saturated"], [1, "1"]],
    },
    load: {
      label: "load: events processed / nominal",
      pos: (v) => v,
      marks: [[0, "0%"], [0.5, "50%"], [1, "100%"]],
    },
    efficiency: {
      label: "spike-transfer efficiency",
      pos: (v) => (v === null ? null : (1 - v) / 0.2),
      marks: [[0, "100%"], [0.5, "90% low"], [1, "≤ 80%"]],
    },
  };

  const $ = (id) => document.getElementById(id);
  let heatMetric = "queue_fill";
  let heatView = "now"; // "now": the live frame; "peak": the worst value per core over the kept window
  let heat = {}; // metric -> /api/v1/heat body
  let stages = null;
  let events = null;
  let heatLayoutNow = null;
  let heatSeq = -1; // newest timeline entry when the heat map's past was last fetched
  let heatStale = false; // fetch the past on the next poll (the view or the metric changed)
  let topo = null;
  let devices = null;
  let history = null;
  let updates = 0;
  let inflight = false;
  let heatRects = null; // Float32Array [x, y, size] per core, for the tooltip

  // ---------------------------------------------------------------------------------------------- formatting

  function si(v, digits = 1) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(digits) + " G";
    if (a >= 1e6) return (v / 1e6).toFixed(digits) + " M";
    if (a >= 1e3) return (v / 1e3).toFixed(digits) + " k";
    return v.toFixed(a < 10 && v !== 0 ? digits : 0) + " ";
  }
  const pct = (v, d = 1) => (v === null || !Number.isFinite(v) ? "–" : (100 * v).toFixed(d) + "%");
  const meps = (keps) => (keps === null || !Number.isFinite(keps) ? "–" : (keps / 1e3).toFixed(1) + " MEPS");

  function rampColor(f) {
    const x = Math.min(1, Math.max(0, f === null || !Number.isFinite(f) ? 0 : f));
    for (let i = 1; i < RAMP.length; i++) {
      const [x1, c1] = RAMP[i];
      if (x <= x1) {
        const [x0, c0] = RAMP[i - 1];
        const u = (x - x0) / (x1 - x0);
        const c = c0.map((a, k) => Math.round(a + (c1[k] - a) * u));
        return `rgb(${c[0]},${c[1]},${c[2]})`;
      }
    }
    const c = RAMP[RAMP.length - 1][1];
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  // ---------------------------------------------------------------------------------------------- canvas

  /** Size the backing store to the element's CSS size times the pixel ratio; returns a cleared context. */
  function prepare(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    const bw = Math.max(1, Math.round(w * dpr));
    const bh = Math.max(1, Math.round(h * dpr));
    if (canvas.width !== bw || canvas.height !== bh) {
      canvas.width = bw;
      canvas.height = bh;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    return { ctx, w, h };
  }

  /** Round numbers for axis ticks covering lo..hi (the first and last tick enclose the range). */
  function ticks(lo, hi, n = 4) {
    const span = hi - lo || 1;
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
    const out = [];
    const first = Math.floor(lo / step + 1e-9) * step;
    for (let v = first; v < hi + step * (1 - 1e-9); v += step) out.push(Math.round(v / step) * step);
    return out;
  }

  /**
   * A time-series line chart.
   * opts: { series: [{label, color, values, dash}], fmt(v) for the y axis, min, max (fixed bounds, optional),
   *         floor (auto range never starts above it), ceil (never ends below it) }
   */
  function lineChart(canvas, t, period, windowLen, opts) {
    const { ctx, w, h } = prepare(canvas);
    const n = t.length;
    // Legend first (latest value of each series), wrapped into as many rows as the width needs.
    const pad = { l: 54, r: 16, t: 0, b: 20 };
    const items = [];
    let lx = pad.l;
    let row = 0;
    for (const s of opts.series) {
      const last = n ? s.values[n - 1] : null;
      const label = `${s.label} ${last === null || last === undefined ? "–" : opts.fmt(last)}`;
      const iw = 18 + ctx.measureText(label).width + 14;
      if (lx + iw > w - pad.r && lx > pad.l) {
        row += 1;
        lx = pad.l;
      }
      items.push({ s, label, x: lx, y: 9 + row * 14 });
      lx += iw;
    }
    pad.t = 9 + row * 14 + 13;
    canvas.dataset.plotTop = String(pad.t);
    ctx.textAlign = "left";
    for (const { s, label, x, y } of items) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.setLineDash(s.dash || []);
      ctx.beginPath();
      ctx.moveTo(x, y);
      ctx.lineTo(x + 14, y);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = COLORS.text;
      ctx.fillText(label, x + 18, y);
    }
    const pw = w - pad.l - pad.r;
    const ph = h - pad.t - pad.b;
    if (n < 2) {
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "center";
      ctx.fillText("collecting samples…", w / 2, pad.t + ph / 2);
      return;
    }
    // While the window is young, zoom to the data (in 30 s steps) instead of squeezing it against "now".
    const tEnd = t[n - 1];
    const span = Math.min(windowLen * period, Math.max(30, Math.ceil((tEnd - t[0]) / 30) * 30));
    const xOf = (ti) => pad.l + pw * (1 - (tEnd - ti) / span);

    let lo = Infinity;
    let hi = -Infinity;
    for (const s of opts.series) {
      for (const v of s.values) {
        if (v === null) continue;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    if (!Number.isFinite(lo)) {
      lo = 0;
      hi = 1;
    }
    if (opts.floor !== undefined) lo = Math.min(lo, opts.floor);
    if (opts.ceil !== undefined) hi = Math.max(hi, opts.ceil);
    if (opts.min !== undefined) lo = opts.min;
    if (opts.max !== undefined) hi = opts.max;
    if (hi - lo < 1e-9) hi = lo + (Math.abs(lo) || 1) * 0.1;
    const ys = ticks(lo, hi);
    lo = ys[0];
    hi = Math.max(hi, ys[ys.length - 1]);
    const yOf = (v) => pad.t + ph * (1 - (v - lo) / (hi - lo));

    // grid and axes
    ctx.strokeStyle = COLORS.grid;
    ctx.lineWidth = 1;
    ctx.fillStyle = COLORS.axis;
    ctx.textAlign = "right";
    for (const v of ys) {
      const y = Math.round(yOf(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, y);
      ctx.lineTo(w - pad.r, y);
      ctx.stroke();
      ctx.fillText(opts.fmt(v), pad.l - 6, y);
    }
    ctx.textAlign = "center";
    const step = span > 60 ? 30 : span > 30 ? 10 : 5;
    for (let ago = 0; ago <= span + 1e-9; ago += step) {
      const x = Math.round(pad.l + pw * (1 - ago / span)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, pad.t);
      ctx.lineTo(x, pad.t + ph);
      ctx.stroke();
      ctx.fillText(ago === 0 ? "now" : `-${ago}s`, x, h - pad.b / 2);
    }

    // series
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.l, pad.t - 2, pw, ph + 4);
    ctx.clip();
    for (const s of opts.series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.75;
      ctx.setLineDash(s.dash || []);
      ctx.beginPath();
      let pen = false;
      for (let i = 0; i < n; i++) {
        const v = s.values[i];
        if (v === null || t[i] === null) {
          pen = false;
          continue;
        }
        const x = xOf(t[i]);
        const y = yOf(v);
        if (pen) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        pen = true;
      }
      ctx.stroke();
    }
    ctx.restore();
    ctx.setLineDash([]);
    // What happened, where it happened on the time axis: faults and reallocations from the timeline.
    for (const m of opts.marks || []) {
      if (m.time < tEnd - span || m.time > tEnd + period) continue;
      const x = Math.round(xOf(Math.min(m.time, tEnd))) + 0.5;
      ctx.strokeStyle = m.color;
      ctx.lineWidth = 1;
      ctx.setLineDash([2, 3]);
      ctx.beginPath();
      ctx.moveTo(x, pad.t);
      ctx.lineTo(x, pad.t + ph);
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }

  // ---------------------------------------------------------------------------------------------- heat map

  function heatLayout(width) {
    const g = topo.geometry;
    const b = topo.board;
    const cell = Math.max(
      3,
      Math.min(MAX_CELL, Math.floor((width - (b.cols - 1) * CHIP_GAP) / (b.cols * g.cols))),
    );
    const chipW = g.cols * cell;
    const chipH = g.rows * cell;
    return {
      cell,
      chipW,
      chipH,
      width: b.cols * chipW + (b.cols - 1) * CHIP_GAP,
      height: b.rows * (chipH + LABEL_H) + (b.rows - 1) * CHIP_GAP,
      chipX: (c) => c.pos[0] * (chipW + CHIP_GAP),
      chipY: (c) => c.pos[1] * (chipH + LABEL_H + CHIP_GAP) + LABEL_H,
    };
  }

  /** Width the mesh may use: the row minus the side column, unless the window is too narrow to share. */
  function meshBudget() {
    const row = $("mesh-row").clientWidth;
    return row - SIDE_MIN - ROW_GAP >= 420 ? row - SIDE_MIN - ROW_GAP : row;
  }

  /** The values the heat map shows: the live frame, or the worst per core over the kept window. */
  function heatValues() {
    const past = heat[heatMetric];
    if (heatView === "peak" && past && past.peak.length === topo.cores.count) return past.peak;
    return devices.cores[heatMetric];
  }

  function drawHeatmap() {
    const canvas = $("heatmap");
    const L = heatLayout(meshBudget());
    heatLayoutNow = L;
    // The canvas is exactly as wide as the chips need; the side column takes the rest of the row.
    for (const [prop, px] of [["width", L.width], ["height", L.height]]) {
      if (canvas.style[prop] !== `${px}px`) canvas.style[prop] = `${px}px`;
    }
    const { ctx } = prepare(canvas);
    const g = topo.geometry;
    const cores = topo.cores;
    const d = devices.cores;
    const metric = METRICS[heatMetric];
    const values = heatValues();
    canvas.dataset.view = values === d[heatMetric] ? "now" : "peak";
    const failedBit = devices.legend.reasons.failed || 1;
    const q = Math.ceil(Math.sqrt(g.cores_per_router)); // sub-grid of cores sharing one router
    const sub = L.cell / q;
    const inset = L.cell >= 8 ? 1 : 0;
    const healthyPerChip = new Array(topo.chips.length).fill(0);
    heatRects = new Float32Array(cores.count * 3);
    const gx0 = topo.chips.map((c) => c.pos[0] * g.cols);
    const gy0 = topo.chips.map((c) => c.pos[1] * g.rows);

    for (let i = 0; i < cores.count; i++) {
      const chip = topo.chips[cores.chip[i]];
      const slot = cores.slot[i];
      const x = L.chipX(chip) + (cores.x[i] - gx0[chip.index]) * L.cell + (slot % q) * sub;
      const y = L.chipY(chip) + (cores.y[i] - gy0[chip.index]) * L.cell + Math.floor(slot / q) * sub;
      const s = sub - inset;
      heatRects[3 * i] = x;
      heatRects[3 * i + 1] = y;
      heatRects[3 * i + 2] = sub;
      const st = d.state[i];
      if (st === STATE.HEALTHY) healthyPerChip[chip.index]++;
      if (st === STATE.UNKNOWN) {
        ctx.fillStyle = COLORS.unknown;
        ctx.fillRect(x, y, s, s);
      } else if (st === STATE.HEALTHY || !(d.reasons[i] & failedBit)) {
        // Healthy, or unhealthy from measurement (soft): the colour still shows why; a red frame marks it.
        ctx.fillStyle = rampColor(metric.pos(values[i]));
        ctx.fillRect(x, y, s, s);
        if (st === STATE.UNHEALTHY) {
          const lw = Math.max(1, Math.min(2, s / 8));
          ctx.strokeStyle = COLORS.softBad;
          ctx.lineWidth = lw;
          ctx.strokeRect(x + lw / 2, y + lw / 2, s - lw, s - lw);
        }
      } else {
        // Failed (a hard fault): crossed out.
        ctx.fillStyle = COLORS.unhealthyFill;
        ctx.fillRect(x, y, s, s);
        ctx.strokeStyle = COLORS.bad;
        ctx.lineWidth = Math.max(1, s / 8);
        ctx.beginPath();
        ctx.moveTo(x + s * 0.2, y + s * 0.2);
        ctx.lineTo(x + s * 0.8, y + s * 0.8);
        ctx.moveTo(x + s * 0.8, y + s * 0.2);
        ctx.lineTo(x + s * 0.2, y + s * 0.8);
        ctx.stroke();
        ctx.strokeRect(x + 0.5, y + 0.5, s - 1, s - 1);
      }
    }
    // chip outlines and labels
    ctx.textAlign = "left";
    for (const chip of topo.chips) {
      const x = L.chipX(chip);
      const y = L.chipY(chip);
      ctx.strokeStyle = COLORS.chipLine;
      ctx.lineWidth = 1;
      ctx.strokeRect(x - 1.5, y - 1.5, L.chipW + 2, L.chipH + 2);
      const bad = chip.cores - healthyPerChip[chip.index];
      ctx.fillStyle = COLORS.text;
      const label = `${chip.id} · NUMA ${chip.numa}`;
      ctx.fillText(label, x, y - LABEL_H / 2);
      const lw = ctx.measureText(label).width;
      ctx.fillStyle = bad ? COLORS.bad : COLORS.axis;
      ctx.fillText(` · ${healthyPerChip[chip.index]}/${chip.cores} healthy`, x + lw, y - LABEL_H / 2);
    }
    drawStages(ctx, q);
  }

  /** Core index -> [job number, stage number] for the stages on this node (from /api/v1/stages). */
  function stageOfCore() {
    const out = new Map();
    if (!stages) return out;
    const index = new Map(topo.cores.ids.map((id, i) => [id, i]));
    stages.jobs.forEach((job, j) => {
      for (const st of job.stages) {
        for (const id of st.cores) {
          const i = index.get(id);
          if (i !== undefined) out.set(i, [j, st.stage]);
        }
      }
    });
    return out;
  }

  const stageColor = (n) => STAGE_COLORS[n % STAGE_COLORS.length];

  /** Outline each stage's cores (edges towards a core of another stage, a free core or another chip) and draw
   *  the spike route from each stage to the next as an arrow between their centres, labelled with its mean hops. */
  function drawStages(ctx, q) {
    const canvas = $("heatmap");
    const owner = stageOfCore();
    const cores = topo.cores;
    const W = topo.mesh.cols * q;
    const H = topo.mesh.rows * q;
    const grid = new Int32Array(W * H).fill(-1);
    const gxy = (i) => [cores.x[i] * q + (cores.slot[i] % q), cores.y[i] * q + Math.floor(cores.slot[i] / q)];
    for (const i of owner.keys()) {
      const [x, y] = gxy(i);
      grid[y * W + x] = i;
    }
    const centres = new Map(); // "j/stage" -> [sumX, sumY, n]
    const lw = 2;
    for (const [i, [j, st]] of owner) {
      const [gx, gy] = gxy(i);
      const x = heatRects[3 * i];
      const y = heatRects[3 * i + 1];
      const s = heatRects[3 * i + 2];
      const key = `${j}/${st}`;
      const c = centres.get(key) || [0, 0, 0];
      centres.set(key, [c[0] + x + s / 2, c[1] + y + s / 2, c[2] + 1]);
      ctx.strokeStyle = stageColor(st);
      ctx.lineWidth = lw;
      ctx.beginPath();
      for (const [dx, dy, x0, y0, x1, y1] of [
        [-1, 0, x, y, x, y + s],
        [1, 0, x + s, y, x + s, y + s],
        [0, -1, x, y, x + s, y],
        [0, 1, x, y + s, x + s, y + s],
      ]) {
        const nx = gx + dx;
        const ny = gy + dy;
        const n = nx >= 0 && ny >= 0 && nx < W && ny < H ? grid[ny * W + nx] : -1;
        const same = n >= 0 && cores.chip[n] === cores.chip[i] && owner.get(n)[0] === j && owner.get(n)[1] === st;
        if (same) continue;
        ctx.moveTo(x0, y0);
        ctx.lineTo(x1, y1);
      }
      ctx.stroke();
    }
    let routes = 0;
    ctx.font = "bold 11px system-ui, sans-serif";
    (stages ? stages.jobs : []).forEach((job, j) => {
      const centre = (st) => {
        const c = centres.get(`${j}/${st}`);
        return c ? [c[0] / c[2], c[1] / c[2]] : null;
      };
      for (const r of job.routes) {
        const a = centre(r.from);
        const b = centre(r.to);
        if (!a || !b) continue;
        routes += 1;
        arrow(ctx, a, b, `${r.mean_hops.toFixed(1)} hops`);
      }
      for (const st of job.stages) {
        const c = centre(st.stage);
        if (c) badge(ctx, c, `S${st.stage}`, stageColor(st.stage));
      }
    });
    ctx.font = "11px system-ui, sans-serif";
    canvas.dataset.stages = String(new Set([...owner.values()].map(([j, st]) => `${j}/${st}`)).size);
    canvas.dataset.routes = String(routes);
  }

  function arrow(ctx, a, b, label) {
    const [ax, ay] = a;
    const [bx, by] = b;
    const len = Math.hypot(bx - ax, by - ay);
    if (len < 24) return; // stages on top of each other: the badges say it
    const ux = (bx - ax) / len;
    const uy = (by - ay) / len;
    const x0 = ax + ux * 13;
    const y0 = ay + uy * 13;
    const x1 = bx - ux * 15;
    const y1 = by - uy * 15;
    for (const [color, width] of [["rgba(0,0,0,0.75)", 5], ["#f4f6f8", 2]]) {
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      ctx.moveTo(x0, y0);
      ctx.lineTo(x1, y1);
      ctx.stroke();
      ctx.beginPath();
      ctx.moveTo(x1 + ux * 3, y1 + uy * 3);
      ctx.lineTo(x1 - ux * 9 - uy * 6, y1 - uy * 9 + ux * 6);
      ctx.lineTo(x1 - ux * 9 + uy * 6, y1 - uy * 9 - ux * 6);
      ctx.closePath();
      ctx.fill();
    }
    const mx = (x0 + x1) / 2;
    const my = (y0 + y1) / 2;
    const tw = ctx.measureText(label).width + 8;
    ctx.fillStyle = "rgba(11,15,20,0.85)";
    ctx.fillRect(mx - tw / 2, my - 8, tw, 16);
    ctx.fillStyle = "#f4f6f8";
    ctx.textAlign = "center";
    ctx.fillText(label, mx, my);
  }

  function badge(ctx, c, text, color) {
    const tw = ctx.measureText(text).width + 8;
    ctx.fillStyle = color;
    ctx.fillRect(c[0] - tw / 2, c[1] - 8, tw, 16);
    ctx.fillStyle = "#0b0f14";
    ctx.textAlign = "center";
    ctx.fillText(text, c[0], c[1]);
  }

  /** The heat map's past: one small mesh per bucket (the worst value per core in it), oldest left; a frame in
   *  which a fault was injected or a stage moved is marked above it. */
  function drawHistory() {
    const canvas = $("heat-history");
    const past = heat[heatMetric];
    const metric = METRICS[heatMetric];
    const g = topo.geometry;
    const b = topo.board;
    const q = Math.ceil(Math.sqrt(g.cores_per_router));
    const cols = topo.mesh.cols * q;
    const rows = topo.mesh.rows * q;
    const CG = 2; // px between chips
    const FG = 10; // px between frames
    const TOP = 14; // marks band
    const BOTTOM = 14; // time labels
    const width = canvas.clientWidth;
    let frames = past ? past.frames.slice(-HEAT_FRAMES) : [];
    let ts = past ? past.t.slice(-frames.length) : [];
    const fit = (k) => Math.floor(((width - (k - 1) * FG) / k - (b.cols - 1) * CG) / cols);
    let cs = frames.length ? Math.min(8, fit(frames.length)) : 4;
    if (frames.length && cs < 2) {
      const k = Math.max(1, Math.floor((width + FG) / (2 * cols + (b.cols - 1) * CG + FG)));
      frames = frames.slice(-k);
      ts = ts.slice(-k);
      cs = 2;
    }
    const fw = cols * cs + (b.cols - 1) * CG;
    const fh = rows * cs + (b.rows - 1) * CG;
    const want = `${TOP + fh + BOTTOM}px`;
    if (canvas.style.height !== want) canvas.style.height = want;
    const { ctx, w, h } = prepare(canvas);
    canvas.dataset.frames = String(frames.length);
    const sub = $("heat-history-sub");
    if (!past || !frames.length) {
      sub.textContent = "";
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "center";
      ctx.fillText("collecting…", w / 2, h / 2);
      return;
    }
    const worst = past.worst === "min" ? "lowest" : "highest";
    sub.textContent =
      `· ${metric.label}, ${worst} per core in each ${past.bucket_s} s, oldest left · ` +
      `marks above a frame: fault injected (red), stage remapped (violet) · ` +
      `"worst, last ${Math.round(past.window_s / 60)} min" colours the mesh by the whole window`;
    const cores = topo.cores;
    const chipCol = (i) => topo.chips[cores.chip[i]].pos[0];
    const chipRow = (i) => topo.chips[cores.chip[i]].pos[1];
    const newest = ts[ts.length - 1];
    const marks = (events ? events.events : []).filter((e) => e.kind === "fault" || e.action === "remapped");
    let hot = 0;
    frames.forEach((frame, k) => {
      const x0 = k * (fw + FG);
      ctx.fillStyle = "#10161d";
      ctx.fillRect(x0, TOP, fw, fh);
      for (let i = 0; i < cores.count; i++) {
        const v = frame[i];
        if (v === null) continue;
        const pos = metric.pos(v);
        if (pos >= 0.7) hot++;
        const slot = cores.slot[i];
        const x = x0 + (cores.x[i] * q + (slot % q)) * cs + chipCol(i) * CG;
        const y = TOP + (cores.y[i] * q + Math.floor(slot / q)) * cs + chipRow(i) * CG;
        ctx.fillStyle = rampColor(pos);
        ctx.fillRect(x, y, cs, cs);
      }
      const t0 = ts[k];
      const inside = marks.filter((e) => e.time >= t0 && e.time < t0 + past.bucket_s);
      inside.forEach((e, n) => {
        ctx.fillStyle = e.kind === "fault" ? COLORS.bad : "#b388ff";
        ctx.fillRect(x0 + n * 8, 2, 6, 8);
      });
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "left";
      const ago = Math.round(newest - t0);
      ctx.fillText(k === frames.length - 1 ? "now" : `-${ago}s`, x0, TOP + fh + BOTTOM / 2 + 1);
    });
    canvas.dataset.hot = String(hot);
  }

  function drawLegend() {
    const canvas = $("heat-legend");
    const { ctx, w, h } = prepare(canvas);
    const barH = 10;
    const metric = METRICS[heatMetric];
    const past = heat[heatMetric];
    const span = past ? `${Math.round(past.window_s / 60)} min` : "window";
    $("legend-label").textContent = heatView === "peak" ? `${metric.label}: worst in the last ${span}` : metric.label;
    for (let x = 0; x < w; x++) {
      ctx.fillStyle = rampColor(x / (w - 1));
      ctx.fillRect(x, 0, 1, barH);
    }
    ctx.fillStyle = COLORS.axis;
    for (const [v, label] of metric.marks) {
      const x = Math.min(w - 1, Math.round(v * (w - 1)));
      ctx.fillRect(x, 0, 1, barH + 3);
      ctx.textAlign = v === 0 ? "left" : v === 1 ? "right" : "center";
      ctx.fillText(label, x, barH + 9);
    }
  }

  function onHeatHover(ev) {
    const tip = $("tooltip");
    if (!heatRects || !devices) return;
    const rect = ev.target.getBoundingClientRect();
    const mx = ev.clientX - rect.left;
    const my = ev.clientY - rect.top;
    let hit = -1;
    for (let i = 0; i < topo.cores.count; i++) {
      const x = heatRects[3 * i];
      const y = heatRects[3 * i + 1];
      const s = heatRects[3 * i + 2];
      if (mx >= x && mx < x + s && my >= y && my < y + s) {
        hit = i;
        break;
      }
    }
    if (hit < 0) {
      tip.hidden = true;
      return;
    }
    const d = devices.cores;
    const state = devices.legend.state[d.state[hit]];
    const reasons = reasonNames(d.reasons[hit]);
    tip.replaceChildren();
    const head = document.createElement("b");
    head.textContent = topo.cores.ids[hit];
    tip.append(head, ` · ${state}${reasons.length ? " (" + reasons.join(", ") + ")" : ""}`);
    const owner = stageOfCore().get(hit);
    const past = heat[heatMetric];
    const lines = [];
    if (owner) {
      const job = stages.jobs[owner[0]];
      const st = job.stages.find((x) => x.stage === owner[1]);
      lines.push(`stage ${owner[1]} of ${job.job} (${st ? st.pod : "?"})`);
    }
    if (past && past.peak.length === topo.cores.count) {
      lines.push(`${METRICS[heatMetric].label}: worst ${fmtMetric(past.peak[hit])} in the last ${past.window_s / 60} min`);
    }
    for (const line of [
      ...lines,
      `queue fill ${pct(d.queue_fill[hit])} of ${topo.cores.queue_capacity[hit]} events`,
      `efficiency ${pct(d.efficiency[hit])} · load ${pct(d.load[hit])}`,
      `effective ${si(d.effective_keps[hit] * 1e3)}EPS of ${si(topo.cores.nominal_keps[hit] * 1e3)}EPS`,
    ]) {
      const div = document.createElement("div");
      div.textContent = line;
      tip.append(div);
    }
    tip.hidden = false;
    const left = Math.min(mx + 14, rect.width - tip.offsetWidth - 4);
    tip.style.left = `${Math.max(0, left)}px`;
    tip.style.top = `${my + 14}px`;
  }

  const fmtMetric = (v) => (heatMetric === "efficiency" ? pct(v) : pct(v, 0));

  function reasonNames(mask) {
    const out = [];
    for (const [name, bit] of Object.entries(devices.legend.reasons)) if (mask & bit) out.push(name);
    return out;
  }

  // ---------------------------------------------------------------------------------------------- panels

  function setTile(id, text, sub, bad) {
    const el = $(id);
    el.replaceChildren(text);
    if (sub) {
      const s = document.createElement("span");
      s.className = "sub";
      s.textContent = sub;
      el.append(s);
    }
    el.classList.toggle("bad", Boolean(bad));
  }

  function renderTiles() {
    const res = devices.resources;
    const nc = res["snnrm.io/neuron-core"];
    const ev = res["snnrm.io/event-throughput"];
    const cc = devices.core_counts;
    if (cc) {
      // allocatable = healthy - withheld for a live remap (lent cores the kubelet must not hand out): not a fault
      const withheld = cc.withheld_for_remap ? ` · ${cc.withheld_for_remap} withheld for remap` : "";
      setTile("tile-cores", `${cc.allocatable}`, `/ ${cc.total} · ${cc.healthy} healthy${withheld}`, cc.unhealthy > 0);
    } else if (nc) {
      setTile("tile-cores", `${nc.healthy_count}`, `/ ${nc.total}`, nc.healthy_count < nc.total);
    }
    if (ev) {
      setTile(
        "tile-blocks",
        `${ev.healthy_count}`,
        `/ ${ev.total} · ${meps(ev.healthy_count * ev.block_keps)}`,
        ev.healthy_count < ev.total,
      );
    }
    const s = history.series;
    const last = (k) => (s[k] && s[k].length ? s[k][s[k].length - 1] : null);
    const effKeps = devices.cores.effective_keps.reduce((a, v) => a + (v || 0), 0);
    setTile("tile-capacity", meps(effKeps));
    setTile("tile-processed", `${si(last("events_processed_per_s"))}`, "events/s");
    const dropped = last("events_dropped_per_s");
    setTile("tile-dropped", `${si(dropped)}`, "events/s", dropped !== null && dropped > 1);
    const faults = devices.faults;
    if (faults === null) setTile("tile-faults", "n/a", "not sim");
    else {
      const active = faults.filter((f) => f.status === "active").length;
      setTile("tile-faults", `${active}`, faults.length > active ? `(${faults.length} listed)` : "", active > 0);
    }
    const age = devices.telemetry_age_s;
    $("meta").textContent =
      `backend ${devices.backend} · ${topo.chips.length} chips on a ${topo.board.cols}×${topo.board.rows} board · ` +
      `${topo.geometry.cols}×${topo.geometry.rows} routers/chip, ${topo.geometry.cores_per_router} core(s)/router · ` +
      `${topo.links.count} links (${topo.links.inter_chip} inter-chip) · frame ${devices.frames}` +
      (age === null ? "" : ` · telemetry ${age.toFixed(1)} s old`);
  }

  function renderCharts() {
    const h = history;
    const s = h.series;
    const tot = h.totals;
    const share = (vals, total) => vals.map((v) => (v === null || !total ? null : v / total));
    const nominal = topo.chips.reduce((a, c) => a + (c.nominal_keps || 0), 0);
    const marks = (events ? events.events : [])
      .filter((e) => e.kind === "fault" || e.kind === "reallocation")
      .map((e) => ({ time: e.time, color: e.kind === "fault" ? "#ef5350" : "#b388ff" }));
    lineChart($("chart-efficiency"), h.t, h.period, h.window, {
      series: [
        { label: "node (delivered/sent)", color: "#5aa9e6", values: s.spike_transfer_ratio },
        { label: "core mean", color: "#3fb67d", values: s.efficiency_mean },
        { label: "core min", color: "#ef5350", values: s.efficiency_min, dash: [4, 3] },
      ],
      fmt: (v) => pct(v, 0),
      floor: 0.8,
      ceil: 1,
      marks,
    });
    lineChart($("chart-throughput"), h.t, h.period, h.window, {
      series: [
        { label: "processed/s", color: "#5aa9e6", values: s.events_processed_per_s },
        { label: "dropped/s", color: "#ef5350", values: s.events_dropped_per_s },
      ],
      fmt: (v) => si(v, v >= 1e3 ? 1 : 0),
      min: 0,
      marks,
    });
    lineChart($("chart-queue"), h.t, h.period, h.window, {
      series: [
        { label: "mean", color: "#3fb67d", values: s.queue_fill_mean },
        { label: "max", color: "#f2a83b", values: s.queue_fill_max },
      ],
      fmt: (v) => pct(v, 0),
      min: 0,
      ceil: 0.2,
      marks,
    });
    lineChart($("chart-health"), h.t, h.period, h.window, {
      series: [
        { label: "cores", color: "#3fb67d", values: share(s.healthy_cores, tot.cores) },
        { label: "throughput devices", color: "#5aa9e6", values: share(s.healthy_blocks, tot.blocks) },
        { label: "measured capacity", color: "#b68cf0", values: share(s.effective_keps, nominal), dash: [4, 3] },
      ],
      fmt: (v) => pct(v, v > 0.99 && v < 1 ? 1 : 0),
      floor: 0.98,
      ceil: 1,
      marks,
    });
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    if (text instanceof Node) td.append(text);
    else td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function tags(names) {
    const frag = document.createDocumentFragment();
    for (const n of names) {
      const span = document.createElement("span");
      span.className = `tag ${n}`;
      span.textContent = n;
      frag.append(span);
    }
    return frag;
  }

  function renderHealth() {
    const box = $("resources");
    box.replaceChildren();
    for (const [name, r] of Object.entries(devices.resources)) {
      const div = document.createElement("div");
      div.className = "res";
      const head = document.createElement("div");
      head.className = "name";
      const left = document.createElement("span");
      left.textContent = name;
      const right = document.createElement("span");
      // Neuron cores by meaning: a core withheld for a live remap is advertised Unhealthy to the kubelet but is
      // healthy (lent to a stage), so it is counted apart, never as a fault.
      const cc = name === "snnrm.io/neuron-core" ? devices.core_counts : null;
      const lent = cc ? cc.withheld_for_remap : 0;
      const bad = cc ? cc.unhealthy : r.total - r.healthy_count;
      const ready = cc ? cc.allocatable : r.healthy_count;
      right.textContent = cc
        ? `${ready} allocatable · ${lent} withheld for remap · ${bad} unhealthy`
        : `${ready} healthy · ${bad} unhealthy`;
      if (bad) right.className = "bad-text";
      head.append(left, right);
      const bar = document.createElement("div");
      bar.className = "bar";
      for (const [cls, n] of [["ok", ready], ["lent", lent], ["bad", bad]]) {
        const seg = document.createElement("div");
        seg.className = cls;
        seg.style.width = `${(100 * n) / Math.max(1, r.total)}%`;
        bar.append(seg);
      }
      div.append(head, bar);
      box.append(div);
    }

    const list = devices.unhealthy_cores;
    $("unhealthy-count").textContent = `(${devices.unhealthy_cores_total})`;
    const body = $("unhealthy").tBodies[0];
    body.replaceChildren();
    if (!list.length) {
      const tr = document.createElement("tr");
      const td = cell("every core is healthy", "empty");
      td.colSpan = 5;
      tr.append(td);
      body.append(tr);
    }
    const d = devices.cores;
    for (const c of list.slice(0, MAX_ROWS)) {
      const tr = document.createElement("tr");
      tr.append(
        cell(c.id),
        cell(tags([c.state])),
        cell(tags(c.reasons)),
        cell(pct(d.queue_fill[c.index])),
        cell(pct(d.efficiency[c.index])),
      );
      body.append(tr);
    }
    if (devices.unhealthy_cores_total > MAX_ROWS) {
      const tr = document.createElement("tr");
      const td = cell(`… and ${devices.unhealthy_cores_total - MAX_ROWS} more (see /api/v1/devices)`, "empty");
      td.colSpan = 5;
      tr.append(td);
      body.append(tr);
    }
  }

  function faultTarget(f) {
    const ids = topo.cores.ids;
    if (Array.isArray(f.cores)) {
      const names = f.cores.slice(0, 4).map((c) => ids[c] || `core ${c}`);
      return names.join(", ") + (f.cores.length > 4 ? ` +${f.cores.length - 4}` : "");
    }
    if (f.chip !== undefined) return `chip${f.chip}`;
    if (Array.isArray(f.chips)) return f.chips.map((c) => `chip${c}`).join(", ");
    if (Array.isArray(f.links)) return `links ${f.links.slice(0, 6).join(", ")}`;
    if (f.link !== undefined) return `link ${f.link}`;
    return "–";
  }

  function renderFaults() {
    const body = $("faults").tBodies[0];
    body.replaceChildren();
    const faults = devices.faults;
    if (faults === null || !faults.length) {
      const tr = document.createElement("tr");
      const td = cell(faults === null ? "fault injection needs --backend sim" : "no faults injected", "empty");
      td.colSpan = 5;
      tr.append(td);
      body.append(tr);
      return;
    }
    for (const f of faults) {
      const tr = document.createElement("tr");
      const since = Number.isFinite(f.injected_at) ? `t=${f.injected_at.toFixed(1)} s` : "–";
      tr.append(
        cell(String(f.id)),
        cell(String(f.kind).replaceAll("_", "-")),
        cell(faultTarget(f)),
        cell(tags([f.status])),
        cell(since),
      );
      body.append(tr);
    }
  }

  function renderJobs() {
    const box = $("jobs");
    box.replaceChildren();
    const jobs = stages ? stages.jobs : [];
    const n = jobs.reduce((a, j) => a + j.stages.length, 0);
    $("jobs-count").textContent = `(${jobs.length} job${jobs.length === 1 ? "" : "s"}, ${n} stage${n === 1 ? "" : "s"})`;
    if (!jobs.length) {
      const p = document.createElement("div");
      p.className = "muted";
      p.textContent = "no split-learning stage runs here";
      box.append(p);
      return;
    }
    for (const job of jobs) {
      const div = document.createElement("div");
      div.className = "job";
      div.dataset.job = job.job;
      const name = document.createElement("div");
      name.className = "job-name";
      name.textContent = `${job.namespace}/${job.job}`;
      div.append(name);
      for (const st of job.stages) {
        const row = document.createElement("div");
        row.className = "stage-row";
        row.dataset.stage = String(st.stage);
        row.dataset.cores = String(st.cores.length);
        const key = document.createElement("span");
        key.className = "key";
        key.style.borderColor = stageColor(st.stage);
        const text = document.createElement("span");
        const chips = st.chips.map((c) => `chip${c}`).join("+");
        text.textContent = `S${st.stage} · ${st.cores.length} cores on ${chips} · ${st.pod}`;
        row.append(key, text);
        if (st.remapped) row.append(tags(["remapped"]), ` generation ${st.generation}`);
        div.append(row);
      }
      if (job.routes.length) {
        const routes = document.createElement("div");
        routes.className = "routes";
        routes.textContent =
          "spike routes (mean hops): " + job.routes.map((r) => `S${r.from}→S${r.to} ${r.mean_hops.toFixed(2)}`).join(" · ");
        div.append(routes);
      }
      box.append(div);
    }
  }

  function clock(t) {
    const d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8);
  }

  function renderTimeline() {
    const list = $("timeline");
    list.replaceChildren();
    const all = events ? events.events : [];
    if (!all.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "nothing happened yet";
      list.append(li);
    }
    const now = devices ? devices.time : Date.now() / 1000;
    for (const e of all.slice(-MAX_EVENTS).reverse()) {
      const li = document.createElement("li");
      li.dataset.seq = String(e.seq);
      li.dataset.kind = e.kind;
      li.dataset.action = e.action;
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = clock(e.time);
      when.title = `${Math.max(0, Math.round(now - e.time))} s ago`;
      const what = document.createElement("span");
      what.className = "what";
      what.append(tags([e.action]));
      const msg = document.createElement("span");
      msg.className = "msg";
      msg.textContent = e.message;
      what.append(msg);
      if (e.repeats > 1) what.append(` (×${e.repeats}, last ${clock(e.last)})`);
      li.append(when, what);
      list.append(li);
    }
    if (events && events.dropped) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = `${events.dropped} older entries dropped (the daemon keeps ${events.capacity})`;
      list.append(li);
    }
    // Beside the mesh, the timeline scrolls within the mesh's height; below it (narrow window), a fixed height.
    const side = $("mesh-side");
    const L = heatLayoutNow;
    const beside = L && side.offsetTop < $("heatmap").offsetTop + 10;
    const room = beside ? L.height - (list.offsetTop - side.offsetTop) : 320;
    list.style.maxHeight = `${Math.max(160, Math.round(room))}px`;
  }

  function render() {
    if (!topo || !devices || !history) return;
    renderTiles();
    drawHeatmap();
    renderJobs();
    renderTimeline();
    drawHistory();
    renderCharts();
    renderHealth();
    renderFaults();
    $("heat-sub").textContent = `· ${topo.cores.count} cores; hover one for details`;
  }

  // ---------------------------------------------------------------------------------------------- polling

  function setConnection(ok, err) {
    const el = $("conn");
    el.className = `conn ${ok ? "live" : "down"}`;
    el.textContent = ok ? `live · ${new Date().toLocaleTimeString()}` : `disconnected: ${err}`;
    if (ok) delete document.body.dataset.error;
    else document.body.dataset.error = String(err);
  }

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  async function tick() {
    if (inflight) return; // a slow server must not pile requests up
    inflight = true;
    try {
      if (!topo) topo = await getJSON("api/v1/topology");
      // The past is fetched every few polls, and at once when something happened (a new timeline entry: a
      // fault or a remap changes what the past holds) or the view asks for it.
      const seq = events && events.events.length ? events.events[events.events.length - 1].seq : 0;
      const wantHeat = !heat[heatMetric] || heatStale || seq !== heatSeq || updates % HEAT_EVERY === 0;
      const [d, h, st, ev, past] = await Promise.all([
        getJSON("api/v1/devices?ids=false"),
        getJSON("api/v1/history"),
        getJSON("api/v1/stages"),
        getJSON("api/v1/events"),
        wantHeat ? getJSON(`api/v1/heat?metric=${heatMetric}&frames=${HEAT_FRAMES}`) : null,
      ]);
      devices = d;
      history = h;
      stages = st;
      events = ev;
      if (past) {
        heat[past.metric] = past;
        heatSeq = seq;
        heatStale = false;
      }
      render();
      updates += 1;
      document.body.dataset.updates = String(updates);
      setConnection(true);
    } catch (e) {
      setConnection(false, e && e.message ? e.message : e);
    } finally {
      inflight = false;
    }
  }

  function pickMetric(ev) {
    const button = ev.target.closest("button[data-metric]");
    if (!button || !(button.dataset.metric in METRICS)) return;
    heatMetric = button.dataset.metric;
    for (const b of $("heat-metric").querySelectorAll("button")) b.classList.toggle("on", b === button);
    drawLegend();
    heatStale = true;
    if (topo && devices) render();
    tick(); // the past of this metric, now
  }

  function pickView(ev) {
    const button = ev.target.closest("button[data-view]");
    if (!button) return;
    heatView = button.dataset.view;
    for (const b of $("heat-view").querySelectorAll("button")) b.classList.toggle("on", b === button);
    drawLegend();
    if (topo && devices) drawHeatmap();
    if (heatView === "peak") {
      heatStale = true;
      tick(); // the window up to now
    }
  }

  function start() {
    drawLegend();
    $("heat-metric").addEventListener("click", pickMetric);
    $("heat-view").addEventListener("click", pickView);
    const heat = $("heatmap");
    heat.addEventListener("mousemove", onHeatHover);
    heat.addEventListener("mouseleave", () => {
      $("tooltip").hidden = true;
    });
    // Redraw when the width changes; deferred to the next frame so that resizing the heat map canvas from
    // inside the callback cannot trigger the "ResizeObserver loop" error.
    let lastWidth = -1;
    new ResizeObserver((entries) => {
      const width = Math.round(entries[0].contentRect.width);
      if (width === lastWidth) return;
      lastWidth = width;
      requestAnimationFrame(render);
    }).observe(document.querySelector("main"));
    tick();
    setInterval(tick, POLL_MS);
  }

  start();
})();
