"""Turns the benchmark's JSON lines into a table, docs/bench.md and docs/bench.svg.

  python3 bench/report.py table RESULTS.jsonl [--md docs/bench.md] [--svg docs/bench.svg] [--command CMD]
  python3 bench/report.py yardstick --ctx 128 --json Y.json [--log Y.log] [--no-prefill] [--steps N] [--shapes "1.8b 7b"]  # -> JSON lines

Every input line is {impl, shape, metric, value, ...} or {impl, shape, metric, error}; impl is
qwen-native, hf-transformers, torch-yardstick, probe (the copy bandwidth), checkpoint or env. An
error that starts with "not measured" (hf_baseline.py on a GPTQ shape) shows as "not measured [k]".
The roofline is computed here (shapes.py) from the bandwidth measured in the same run. Pure Python
(no torch, no matplotlib): the SVG chart is written by hand so the report always renders.
"""
import argparse, datetime, html, json, math, os, re, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import SHAPES, kv_bytes, label, roofline_tok_s, weight_bytes  # noqa: E402

OURS, HF, YARD = "qwen-native", "hf-transformers", "torch-yardstick"
IMPL_NAMES = {OURS: "qwen-native", HF: "HF transformers", YARD: "torch yardstick"}
DEFAULT_WARMUP, DEFAULT_STEPS = 8, 128  # qwen_native.mjs's defaults: where the KV midpoint lies if unknown
TARGETS = {"7b": 0.75, "1.8b": 0.60}  # the issue's decode targets, fraction of the roofline
YARD_SHAPES = ("1.8b", "7b")  # the shapes torch_yardstick.py knows (v1, MHA)
TARGET_CTX = 128  # the issue's target numbers (about 160 and 590 tok/s) are short-context ones
QUANT_TARGETS = {"7b-int4": 400, "7b-int8": 280}  # tok/s on an H100, batch 1 (the quantization issue)
SERVE_TARGET_C = 16  # the batching issue: at 16 concurrent requests, >= 8x one request and >= 5x HF


# ---------------------------------------------------------------- the yardstick's output -> lines

def yardstick_lines(ctx, json_path, log_path, prefill=True, steps=None, shapes=YARD_SHAPES):
    """torch_yardstick.py writes one JSON object per run (the shapes it ran) with --json, and prints
    a line per shape; the printed lines stand in when the run died before writing the JSON. A shape
    of `shapes` missing from both becomes an error line."""
    data = None
    if json_path and os.path.exists(json_path):
        try:
            data = json.load(open(json_path))
        except ValueError:
            data = None
    if data is None and log_path and os.path.exists(log_path):
        data = {}
        pat = re.compile(r"^(\S+): decode ([\d.]+) tok/s = \d+% of roofline (\d+); prefill 2048: (\d+) tok/s; peak ([\d.]+) GB")
        for line in open(log_path, errors="replace"):
            m = pat.match(line.strip())
            if m:
                data[m[1]] = dict(decode_tok_s=float(m[2]), roofline_tok_s=float(m[3]),
                                  prefill_2048_tok_s=float(m[4]), peak_mem_GB=float(m[5]))
    out = []
    if data is None:
        return [{"impl": YARD, "shape": s, "metric": "run", "ctx": ctx, "error": "no output (see the run log)"} for s in shapes]
    if "copy_TBps" in data:
        out.append({"impl": YARD, "metric": "copy_bandwidth_Bps", "value": data["copy_TBps"] * 1e12, "ctx": ctx})
    for shape in SHAPES:
        r = data.get(shape)
        if not isinstance(r, dict):
            if shape in shapes:
                out.append({"impl": YARD, "shape": shape, "metric": "decode_tok_s", "ctx": ctx,
                            "error": f"no {shape} result in the yardstick's output at ctx {ctx} (see the run log)"})
            continue
        out.append({"impl": YARD, "shape": shape, "metric": "decode_tok_s", "ctx": ctx, "value": r["decode_tok_s"],
                    "steps": steps, "own_roofline_tok_s": r.get("roofline_tok_s")})
        if prefill:
            out.append({"impl": YARD, "shape": shape, "metric": "prefill_tok_s", "tokens": 2048, "value": r["prefill_2048_tok_s"]})
        out.append({"impl": YARD, "shape": shape, "metric": "peak_mem_bytes", "kind": "allocator", "value": r["peak_mem_GB"] * 1e9})
    return out


# ---------------------------------------------------------------- reading the lines

class Results:
    def __init__(self, lines):
        self.recs, self.bad = [], 0
        for line in lines:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                self.recs.append(json.loads(line))
            except ValueError:
                self.bad += 1

    def find(self, impl, shape, metric, **quals):
        """Records of impl/shape/metric whose given qualifiers match (cold=None: not cold)."""
        out = []
        for r in self.recs:
            if r.get("impl") != impl or r.get("metric") != metric or (shape and r.get("shape") != shape):
                continue
            if all(bool(r.get(k)) == bool(v) if k == "cold" else r.get(k) == v for k, v in quals.items()):
                out.append(r)
        return out

    def value(self, impl, shape, metric, pick=max, **quals):
        """(value, error): the value of the matching records (pick() of several), else their error,
        else the error of a whole failed step of this impl and shape (metric "run" or "load_s")."""
        rs = self.find(impl, shape, metric, **quals)
        vals = [r["value"] for r in rs if isinstance(r.get("value"), (int, float)) and "error" not in r]
        if vals:
            return pick(vals), None
        errs = [r["error"] for r in rs if r.get("error")]
        if not errs:
            errs = [r["error"] for r in self.recs if r.get("impl") == impl and r.get("shape") == shape
                    and r.get("metric") in ("run", "load_s") and r.get("error")]
        return None, (errs[0] if errs else None)

    def bandwidth(self):
        """(bytes/s, where it came from)."""
        v, _ = self.value("probe", None, "copy_bandwidth_Bps")
        if v:
            return v, "measured in this run (4 GiB device-to-device copy, read + write, median of 10)"
        why = next((r["error"] for r in self.recs if r.get("impl") == "probe" and r.get("error")), "no result")
        v, _ = self.value(YARD, None, "copy_bandwidth_Bps")
        if v:
            return v, f"the torch yardstick's copy probe in this run (our probe: {why})"
        return 3.0e12, f"ASSUMED 3.0 TB/s (DEVICE.md's H100 figure): the probe gave no result ({why})"

    def env(self, key):
        for r in self.recs:
            if r.get(key) and r.get("impl") in ("probe", "env", HF):
                return r[key]
        return None

    def gpu(self):
        g = self.env("gpu")
        if g:
            return g
        for r in self.recs:
            if r.get("impl") == OURS and r.get("metric") == "load_s" and r.get("device"):
                return r["device"]
        try:
            import torch
            return torch.cuda.get_device_name()
        except Exception:  # noqa: BLE001 - no torch / no GPU where the report is made
            return "unknown GPU"


# ---------------------------------------------------------------- the table

def fmt_num(v, unit=""):
    if v is None:
        return None
    if unit == "GB":
        return f"{v / 1e9:.2f}"
    if v >= 10000:
        return f"{v / 1000:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


class Table:
    COLS = ["shape", "metric", "qwen-native", "HF transformers", "torch yardstick", "roofline", "ours / roofline", "ours / HF", "ours / yardstick"]

    def __init__(self, res):
        self.res, self.rows, self.errors, self.chart = res, [], [], {}
        self.bw, self.bw_src = res.bandwidth()

    def cell(self, v, err, unit=""):
        if v is not None:
            return fmt_num(v, unit)
        if err:
            if err not in self.errors:
                self.errors.append(err)
            return f"{'not measured' if err.startswith('not measured') else 'error'} [{self.errors.index(err) + 1}]"
        return "—"

    @staticmethod
    def ratio(a, b, pct=False):
        if a is None or not b:
            return ""
        return f"{100 * a / b:.0f}%" if pct else f"{a / b:.2f}x"

    def kv_mid(self, shape, ctx):
        rs = self.res.find(OURS, shape, "decode_tok_s", ctx=ctx)
        for r in rs:
            if r.get("kv_mid"):
                return r["kv_mid"]
        return ctx + DEFAULT_WARMUP + DEFAULT_STEPS // 2

    def shape_ctxs(self, shape, ctxs):
        """The decode contexts a shape's rows show: those some implementation has a decode line for
        (the GPTQ shapes run at 128 only); all of them when a step of the shape failed as a whole,
        so that its error shows in every row."""
        R = self.res
        failed = any(r.get("shape") == shape and r.get("metric") in ("run", "load_s") and r.get("error")
                     and not r["error"].startswith("not measured") for r in R.recs)
        own = {r["ctx"] for r in R.recs if r.get("shape") == shape and r.get("metric") == "decode_tok_s" and isinstance(r.get("ctx"), int)}
        return ctxs if failed or not own else sorted(own)

    def build(self):
        shapes = [s for s in SHAPES if any(r.get("shape") == s for r in self.res.recs)]
        ctxs = sorted({r["ctx"] for r in self.res.recs if r.get("metric") == "decode_tok_s" and isinstance(r.get("ctx"), int)})
        R = self.res
        for shape in shapes:
            sname = label(shape)
            for ctx in self.shape_ctxs(shape, ctxs):
                o, oe = R.value(OURS, shape, "decode_tok_s", ctx=ctx)
                h, he = R.value(HF, shape, "decode_tok_s", ctx=ctx)
                y, ye = R.value(YARD, shape, "decode_tok_s", ctx=ctx)
                roof = roofline_tok_s(shape, self.kv_mid(shape, ctx), self.bw)
                self.rows.append([sname, f"decode tok/s, batch 1, context {ctx}", self.cell(o, oe), self.cell(h, he), self.cell(y, ye),
                                  fmt_num(roof), self.ratio(o, roof, True), self.ratio(o, h), self.ratio(o, y)])
                self.chart[(shape, f"decode {ctx}")] = dict(ours=(o, oe), hf=(h, he), yard=(y, ye), roof=roof)
            for ctx in ctxs:
                o, oe = R.value(OURS, shape, "decode_complete_tok_s", ctx=ctx)
                if o is None and oe is None:
                    continue
                n = next((r.get("tokens") for r in R.find(OURS, shape, "decode_complete_tok_s", ctx=ctx) if r.get("tokens")), DEFAULT_STEPS)
                roof = roofline_tok_s(shape, ctx + 16 + n // 2, self.bw)  # the extra tokens follow the 16 of the shorter run
                self.rows.append([sname, f"decode tok/s, context {ctx}, via complete()", self.cell(o, oe), "", "",
                                  fmt_num(roof), self.ratio(o, roof, True), "", ""])
            o, oe = R.value(OURS, shape, "prefill_tok_s", tokens=2048, cold=False)
            h, he = R.value(HF, shape, "prefill_tok_s", tokens=2048, cold=False)
            y, ye = R.value(YARD, shape, "prefill_tok_s", tokens=2048)
            self.rows.append([sname, "prefill tok/s, 2048 tokens", self.cell(o, oe), self.cell(h, he), self.cell(y, ye), "", "",
                              self.ratio(o, h), self.ratio(o, y)])
            self.chart[(shape, "prefill 2048")] = dict(ours=(o, oe), hf=(h, he), yard=(y, ye))
            for ctx in ctxs:
                if ctx == 2048:
                    continue
                o, oe = R.value(OURS, shape, "prefill_tok_s", tokens=ctx, cold=True)
                h, he = R.value(HF, shape, "prefill_tok_s", tokens=ctx, cold=True)
                if o is None and h is None:
                    continue
                self.rows.append([sname, f"prefill tok/s, {ctx} tokens (first call)", self.cell(o, oe), self.cell(h, he), "", "", "",
                                  self.ratio(o, h), ""])
            o, oe = R.value(OURS, shape, "peak_mem_bytes", kind="model.memory()")
            h, he = R.value(HF, shape, "peak_mem_bytes", kind="torch.cuda.max_memory_allocated")
            y, ye = R.value(YARD, shape, "peak_mem_bytes", kind="allocator")
            self.rows.append([sname, "peak GPU memory, GB: allocations", self.cell(o, oe, "GB"), self.cell(h, he, "GB"), self.cell(y, ye, "GB"),
                              "", "", self.ratio(o, h), self.ratio(o, y)])
            o, oe = R.value(OURS, shape, "peak_mem_bytes", kind="nvidia-smi")
            h, he = R.value(HF, shape, "peak_mem_bytes", kind="nvidia-smi")
            if o is not None or h is not None:
                self.rows.append([sname, "peak GPU memory, GB: nvidia-smi", self.cell(o, oe, "GB"), self.cell(h, he, "GB"), "", "", "",
                                  self.ratio(o, h), ""])
        return self

    def targets(self):
        out = []
        # Decode at batch 1, both ways a user runs it: the native generation loop (complete(),
        # generate(), chat(), the server) and a JS loop over seq.eval (logits to JS every step).
        for shape, frac in TARGETS.items():
            if not any(r.get("shape") == shape for r in self.res.recs):
                continue
            roof = roofline_tok_s(shape, self.kv_mid(shape, TARGET_CTX), self.bw)
            need = frac * roof
            for metric, how in (("decode_complete_tok_s", "via complete()"), ("decode_tok_s", "seq.eval loop in JS")):
                o, _ = self.res.value(OURS, shape, metric, ctx=TARGET_CTX)
                verdict = "no result" if o is None else ("PASS" if o >= need else "FAIL")
                got = "—" if o is None else f"{o:.0f} tok/s = {100 * o / roof:.0f}%"
                out.append(f"| {label(shape)} decode, context {TARGET_CTX}, {how} | >= {100 * frac:.0f}% of roofline ({need:.0f} tok/s) | {got} | {verdict} |")
        for shape, need in QUANT_TARGETS.items():  # H100 figures from the quantization issue
            if not any(r.get("shape") == shape for r in self.res.recs):
                continue
            for metric, how in (("decode_complete_tok_s", "via complete()"), ("decode_tok_s", "seq.eval loop in JS")):
                o, _ = self.res.value(OURS, shape, metric, ctx=TARGET_CTX)
                verdict = "no result" if o is None else ("PASS" if o >= need else "FAIL")
                got = "—" if o is None else f"{o:.0f} tok/s"
                out.append(f"| {label(shape)} decode, context {TARGET_CTX}, {how} | >= {need} tok/s | {got} | {verdict} |")
        # Serving (the batching issue): 16 concurrent requests vs one, and vs HF's batched generate.
        serve = [r for r in self.res.recs if r.get("impl") == OURS and r.get("metric") == "batch_tok_s" and r.get("value")]
        for shape in dict.fromkeys(r.get("shape") for r in serve):
            by = {r.get("concurrency"): r["value"] for r in serve if r.get("shape") == shape}
            c16, c1 = by.get(SERVE_TARGET_C), by.get(1)
            if c16 and c1:
                verdict = "PASS" if c16 >= 8 * c1 else "FAIL"
                out.append(f"| {label(shape)} serving, {SERVE_TARGET_C} concurrent | >= 8x one request ({8 * c1:.0f} tok/s) | "
                           f"{c16:.0f} tok/s = {c16 / c1:.1f}x | {verdict} |")
            h = next((r.get("value") for r in self.res.recs if r.get("impl") == HF and r.get("metric") == "batch_tok_s"
                      and r.get("shape") == shape and r.get("batch") == SERVE_TARGET_C and r.get("value")), None)
            if c16 and h:
                verdict = "PASS" if c16 >= 5 * h else "FAIL"
                out.append(f"| {label(shape)} serving, {SERVE_TARGET_C} concurrent | >= 5x HF batched generate ({5 * h:.0f} tok/s) | "
                           f"{c16:.0f} tok/s = {c16 / h:.1f}x | {verdict} |")
        for shape in SHAPES:  # GPTQ shapes have no Hugging Face column to compare with
            s = SHAPES[shape]
            if s.get("cpu_check") or s.get("bits") or not any(r.get("shape") == shape for r in self.res.recs):
                continue
            o, _ = self.res.value(OURS, shape, "prefill_tok_s", tokens=2048, cold=False)
            h, _ = self.res.value(HF, shape, "prefill_tok_s", tokens=2048, cold=False)
            verdict = "no result" if o is None or h is None else ("PASS" if o >= h else "FAIL")
            got = "—" if o is None else f"{o:.0f} tok/s" + (f" vs {h:.0f}" if h else "")
            out.append(f"| {label(shape)} prefill, 2048 tokens | >= Hugging Face's | {got} | {verdict} |")
        return out

    def markdown(self):
        lines = ["| " + " | ".join(self.COLS) + " |", "|" + "|".join("---" for _ in self.COLS) + "|"]
        lines += ["| " + " | ".join(c if c else "" for c in row) + " |" for row in self.rows]
        return lines

    def text(self):
        w = [max(len(self.COLS[i]), *(len(r[i] or "") for r in self.rows)) if self.rows else len(self.COLS[i]) for i in range(len(self.COLS))]
        line = lambda cells: "  ".join((c or "").ljust(w[i]) if i < 2 else (c or "").rjust(w[i]) for i, c in enumerate(cells))  # noqa: E731
        return [line(self.COLS), "  ".join("-" * x for x in w)] + [line(r) for r in self.rows]


# ---------------------------------------------------------------- the chart (hand-written SVG)

COLORS = {"ours": "#2563eb", "yard": "#f59e0b", "hf": "#9ca3af", "roof": "#ffffff"}
LABELS = {"ours": "qwen-native", "yard": "torch yardstick (CUDA graph)", "hf": "HF transformers (eager)", "roof": "roofline (copy bandwidth / bytes per step)"}


def nice_max(v):
    if v <= 0:
        return 1
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def svg_panel(x0, y0, w, h, title, groups, series, esc):
    """One bar panel: groups [(label, {series: (value, error)})]; returns SVG elements."""
    out = [f'<text x="{x0 + w / 2}" y="{y0 - 12}" text-anchor="middle" font-size="14" font-weight="bold">{esc(title)}</text>']
    vmax = nice_max(1.08 * max([v for _, d in groups for s in series for v in [d.get(s, (None, None))[0]] if v] or [1]))
    for i in range(6):  # y grid and ticks
        v = vmax * i / 5
        y = y0 + h - h * i / 5
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#4b5563">{esc(fmt_num(v) if v else "0")}</text>')
    gw = w / max(1, len(groups))
    bw = min(34, (gw - 16) / len(series))
    for gi, (label, d) in enumerate(groups):
        gx = x0 + gi * gw + (gw - bw * len(series)) / 2
        for si, s in enumerate(series):
            v, err = d.get(s, (None, None))
            x = gx + si * bw
            if v is None:
                mark = "n/a" if not err else "n/m" if err.startswith("not measured") else "err"
                out.append(f'<text x="{x + bw / 2:.1f}" y="{y0 + h - 4}" text-anchor="middle" font-size="10" fill="#b91c1c">{mark}</text>')
                continue
            bh = h * v / vmax
            dash = ' stroke-dasharray="4 3"' if s == "roof" else ""
            out.append(f'<rect x="{x + 1:.1f}" y="{y0 + h - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" fill="{COLORS[s]}" stroke="#374151"{dash}/>')
            out.append(f'<text x="{x + bw / 2:.1f}" y="{y0 + h - bh - 4:.1f}" text-anchor="middle" font-size="10">{esc(fmt_num(v))}</text>')
        out.append(f'<text x="{x0 + gi * gw + gw / 2:.1f}" y="{y0 + h + 18}" text-anchor="middle" font-size="12">{esc(label)}</text>')
    out.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#374151"/>')
    return out


def svg_chart(table, gpu, date):
    esc = html.escape
    shapes = [s for s in SHAPES if any(k[0] == s for k in table.chart)]
    dec = [(f"{label(s)} ctx {k[1].split()[1]}", {**v, "roof": (v["roof"], None)}) for s in shapes for k, v in table.chart.items() if k[0] == s and k[1].startswith("decode")]
    pre = [(label(s), v) for s in shapes for k, v in table.chart.items() if k[0] == s and k[1].startswith("prefill")]
    families = " and ".join(f for f, arch in (("Qwen v1", "qwen"), ("Qwen2.5", "qwen2")) if any(SHAPES[s]["arch"] == arch for s in shapes))
    dtypes = "bf16 and GPTQ" if any(SHAPES[s].get("bits") for s in shapes) else "bf16"
    W, H = 1000, 470
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif">',
          f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
          f'<text x="{W / 2}" y="26" text-anchor="middle" font-size="17" font-weight="bold">qwen-native vs PyTorch, {dtypes}, batch 1 — {esc(gpu)}</text>',
          f'<text x="{W / 2}" y="46" text-anchor="middle" font-size="12" fill="#4b5563">random-weight {families or "Qwen"} shapes; {esc(date)}; tokens per second, higher is better</text>']
    el += svg_panel(70, 110, 560, 270, "Decode tok/s", dec, ["ours", "yard", "hf", "roof"], esc)
    el += svg_panel(720, 110, 250, 270, "Prefill tok/s, 2048 tokens", pre, ["ours", "yard", "hf"], esc)
    lx = 70
    for s in ("ours", "yard", "hf", "roof"):
        dash = ' stroke-dasharray="4 3"' if s == "roof" else ""
        el.append(f'<rect x="{lx}" y="{H - 40}" width="14" height="14" fill="{COLORS[s]}" stroke="#374151"{dash}/>')
        el.append(f'<text x="{lx + 20}" y="{H - 28}" font-size="12">{esc(LABELS[s])}</text>')
        lx += 40 + 7 * len(LABELS[s])
    el.append("</svg>")
    return "\n".join(el) + "\n"


# ---------------------------------------------------------------- bench.md

def serving_section(res):
    """Throughput at C concurrent requests (bench/concurrent.mjs, metric batch_tok_s with
    `concurrency`) next to HF's batched generate (bench/hf_batched.py, `batch`), per shape."""
    ours = [r for r in res.recs if r.get("impl") == OURS and r.get("metric") == "batch_tok_s"]
    if not ours:
        return []
    hf = {(r.get("shape"), r.get("batch")): r for r in res.recs if r.get("impl") == HF and r.get("metric") == "batch_tok_s"}
    L = ["", "## Serving: concurrent requests", "",
         "| shape | concurrent | qwen-native tok/s | x its 1-request rate | inter-token ms | first token ms | HF batched generate tok/s | ours / HF |",
         "|---|---|---|---|---|---|---|---|"]
    notes = []

    def note(msg):  # footnote number of msg, one footnote per distinct message
        if msg not in notes:
            notes.append(msg)
        return notes.index(msg) + 1

    for shape in dict.fromkeys(r.get("shape") for r in ours):
        rows = sorted((r for r in ours if r.get("shape") == shape), key=lambda r: r.get("concurrency") or 0)
        one = next((r.get("value") for r in rows if r.get("concurrency") == 1 and r.get("value")), None)
        for r in rows:
            c, v = r.get("concurrency"), r.get("value")
            h = hf.get((shape, c))
            if h and h.get("error"):
                k = note(h["error"])
                hcell = f"not measured [{k}]" if h["error"].startswith("not measured") else f"error [{k}]"
                hv = None
            else:
                hv = h.get("value") if h else None
                hcell = fmt_num(hv) if hv else ""
            if v is None:
                L.append(f"| {label(shape) if shape in SHAPES else shape} | {c} | error [{note(r.get('error', 'no result'))}] | | | | {hcell} | |")
                continue
            L.append(f"| {label(shape) if shape in SHAPES else shape} | {c} | {fmt_num(v)} | {f'{v / one:.2f}x' if one else ''} | "
                     f"{fmt_num(r.get('itl_ms'))} | {fmt_num(r.get('ttft_ms'))} | {hcell} | {f'{v / hv:.2f}x' if hv else ''} |")
    L += [""] + [f"[{i + 1}] {e}" for i, e in enumerate(notes)] if notes else []
    p = next((r.get("prompt") for r in ours if r.get("prompt")), "?")
    tk = next((r.get("tokens") for r in ours if r.get("concurrency") == 1 and r.get("tokens")), "?")
    L += ["", f"- qwen-native (`bench/concurrent.mjs`): C `model.generate` streams started together, each a random prompt of {p} ids, "
          f"greedy, {tk} new tokens each (maxNewTokens; a random model may stop at its eos: the tokens generated are counted), through "
          "the continuous-batching engine (maxBatch = the largest C): throughput = all tokens / wall time from the first request to "
          "the last token, prefill and batch admission included; inter-token = the mean gap between a request's tokens after its "
          "first. A warm-up round at each C first (graph capture per batch size).",
          "- HF (`bench/hf_batched.py`): `model.generate` on a static batch of B rows (B = C), the same prompt length, exactly the "
          "same number of new tokens per row (min_new_tokens), greedy, one warm-up call; B x tokens / wall time."]
    return L


def markdown_doc(table, res, gpu, date, command):
    bw = table.bw
    tv = lambda k: res.env(k) or "?"  # noqa: E731
    node = res.env("node") or "?"
    commit = res.env("commit") or "?"
    L = [f"# Benchmark: qwen-native on {gpu}", "",
         f"{date} · commit {commit} · node {node} · torch {tv('torch')} · transformers {tv('transformers')} · CUDA driver {tv('driver')}", "",
         "```", command, "```", "",
         "![decode and prefill tok/s](bench.svg)", ""]
    L += table.markdown()
    if table.errors:
        L += [""] + [f"[{i + 1}] {e}" for i, e in enumerate(table.errors)]
    L += serving_section(res)
    tg = table.targets()
    if tg:
        L += ["", "## The issue's targets", "", "| target | needed | measured | |", "|---|---|---|---|"] + tg
    L += ["", "## How it was measured", "",
          f"- **Roofline**: a batch-1 decode step reads every weight once plus the KV cache it attends over, "
          f"so decode tok/s <= bandwidth / bytes per step. Bandwidth {bw / 1e12:.2f} TB/s: {table.bw_src}. "
          "Bytes per step = weights + KV (`bench/shapes.py`). bf16 weights: 2 x (V·H [lm_head] + L·((n + 2·n_kv)·d·H + (n + 2·n_kv)·d "
          "[q, k, v and their bias] + n·d·H [o_proj] + 3·H·F [MLP] + 2H) + H), with d = H/n; Qwen v1 has n_kv = n (c_attn 3H·H + 3H, "
          "c_proj H·H). GPTQ: each linear K x N reads K·N·bits/8 + (K/G)·N·(2 + bits/8) [fp16 scales, packed zeros] + 2N [fp16 bias, "
          "where stored: v1 on every linear, Qwen2.5 on q, k, v], lm_head and norms fp16. KV at context c: 2·L·c·n_kv·d·2 (bf16 k and v). "
          "The embedding row read is negligible. Evaluated at the KV length in the middle of the timed steps.",
          ]
    for s in SHAPES:
        if not SHAPES[s].get("cpu_check") and any(r.get("shape") == s for r in res.recs):
            d = SHAPES[s]
            q = f", GPTQ int{d['bits']} g{d['G']}" if d.get("bits") else ", bf16"
            L.append(f"  - {label(s)}: H{d['H']} L{d['L']} n{d['n']} n_kv{d['n_kv']} d{d['H'] // d['n']} F{d['F']} V{d['V']}{q}: "
                     f"{weight_bytes(s) / 1e9:.3f} GB of weights + {kv_bytes(s, 1) / 1e3:.1f} kB of KV per context position, per step.")
    def rec(impl, metric, key, default):  # a parameter as recorded by the run, for the text below
        return next((r[key] for r in res.recs if r.get("impl") == impl and r.get("metric") == metric and r.get(key) is not None), default)
    ow, os_ = rec(OURS, "decode_tok_s", "warmup", DEFAULT_WARMUP), rec(OURS, "decode_tok_s", "steps", DEFAULT_STEPS)
    oc, orp = rec(OURS, "peak_mem_bytes", "contextLength", "?"), rec(OURS, "prefill_tok_s", "reps", 3)
    hw, hs, hrp = rec(HF, "decode_tok_s", "warmup", "?"), rec(HF, "decode_tok_s", "steps", "?"), rec(HF, "prefill_tok_s", "reps", "?")
    L += [f"- **qwen-native** (`bench/qwen_native.mjs`, device `cuda`): random checkpoints of the shapes (`bench/make_checkpoint.py`) "
          f"loaded with `Model.load`. Decode: prefill c random ids with `seq.eval`, {ow} warm-up steps (the first captures the CUDA graph), "
          f"then {os_} timed `seq.eval([argmax(logits)])` steps: the logits go to JS every step and the argmax runs in JS, as in a user's loop. "
          f"`via complete()`: `model.complete(ids, {{doSample: false}})` with maxNewTokens 16 and 16 + {os_}, the difference in tokens over the "
          f"difference in time (the native greedy loop; prefill and graph capture cancel out). Prefill: `seq.eval` of 2048 ids on a fresh "
          f"sequence, one warm-up, median of {orp}. Allocations = weights + kvCache + kvCacheFree + workspace from `model.memory()` (a "
          f"sequence's KV cache holds pages of 64 positions for what it has used; contextLength {oc}).",
          "- **HF transformers** (`bench/hf_baseline.py`): `Qwen2ForCausalLM`: for the Qwen2.5 shapes the model itself (grouped KV heads, "
          "rope_theta 1e6); for the Qwen v1 shapes with num_key_value_heads = num_attention_heads (MHA) and intermediate_size = F: the "
          "same block at the same cost (qkv with bias, SwiGLU of width F, untied lm_head). GPTQ shapes: not measured (the footnote says why). bf16, SDPA, random "
          "weights on the GPU, eager forward in a loop with its DynamicCache, greedy argmax on the GPU, timed with CUDA events "
          f"({hw} warm-up + {hs} timed steps); prefill: one forward of 2048 ids, last position's logits only, median of {hrp}. "
          "Allocations = `torch.cuda.max_memory_allocated`.",
          "- **torch yardstick** (`torch_yardstick.py`, run from .carry/): what a careful PyTorch user writes: fused qkv, static KV cache, cuBLAS, SDPA, "
          f"the whole decode step in one CUDA graph (decode over a zero-filled cache of the same length; {rec(YARD, 'decode_tok_s', 'steps', '?')} steps).",
          "- **nvidia-smi**: the largest `memory.used` of the whole GPU sampled every 50 ms while the process ran: adds the CUDA context "
          "and the allocator's slack to the allocations.",
          "- Each implementation ran alone on the GPU, one process per shape, one after the other, in one `bench/run.sh` run."]
    steps = [r for r in res.recs if r.get("impl") == OURS and r.get("metric") == "decode_tok_s" and r.get("step_ms_p50")]
    if steps:
        L += ["", "qwen-native's decode steps (ms): median, 90th percentile, the JS argmax's share, the first step (graph capture):", ""]
        L += [f"- {label(r['shape']) if r['shape'] in SHAPES else r['shape']} context {r['ctx']}: p50 {r['step_ms_p50']}, p90 {r['step_ms_p90']}, argmax {r.get('argmax_ms')}, "
              f"first {r.get('first_step_ms')}" for r in steps]
    loads = [r for r in res.recs if r.get("metric") in ("load_s", "write_s") and isinstance(r.get("value"), (int, float))]
    if loads:
        L += ["", "Set-up times (s): " + ", ".join(f"{r['impl']} {r.get('shape')} {r['metric']} {r['value']:.1f}" for r in loads)
              + f"; checkpoints in {res.env('ckpt_dir') or '?'}."]
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("results")
    t.add_argument("--md")
    t.add_argument("--svg")
    t.add_argument("--command", default="bash bench/run.sh")
    y = sub.add_parser("yardstick")
    y.add_argument("--ctx", type=int, required=True)
    y.add_argument("--json")
    y.add_argument("--log")
    y.add_argument("--no-prefill", action="store_true")
    y.add_argument("--steps", type=int)
    y.add_argument("--shapes", default=" ".join(YARD_SHAPES), help="the shapes the yardstick was asked to run")
    a = ap.parse_args()
    if a.cmd == "yardstick":
        for r in yardstick_lines(a.ctx, a.json, a.log, not a.no_prefill, a.steps, a.shapes.split()):
            print(json.dumps(r))
        return
    res = Results(open(a.results, errors="replace"))
    table = Table(res).build()
    gpu = res.gpu()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{gpu}, {date}; copy bandwidth {table.bw / 1e12:.2f} TB/s: {table.bw_src}\n")
    print("\n".join(table.text()))
    for i, e in enumerate(table.errors):
        print(f"[{i + 1}] {e}")
    tg = table.targets()
    if tg:
        print("\ntargets:\n" + "\n".join(tg))
    if res.bad:
        print(f"({res.bad} unreadable lines skipped)")
    if a.md:
        os.makedirs(os.path.dirname(os.path.abspath(a.md)), exist_ok=True)
        open(a.md, "w").write(markdown_doc(table, res, gpu, date, a.command))
        print(f"wrote {a.md}")
    if a.svg:
        os.makedirs(os.path.dirname(os.path.abspath(a.svg)), exist_ok=True)
        open(a.svg, "w").write(svg_chart(table, gpu, date))
        print(f"wrote {a.svg}")


if __name__ == "__main__":
    main()
