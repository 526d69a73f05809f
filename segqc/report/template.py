"""The report's HTML: inline CSS, inline data (JSON) and plain inline JavaScript.

Nothing is fetched when the file is opened (no CDN, no fonts, no network): the table is
built in the browser from the embedded JSON one page at a time, so a run of thousands
of cases opens quickly — the thumbnails of a page are decoded only when it is shown.
"""

from __future__ import annotations

import html
import json
import math

__all__ = ["render_html"]


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _f(v, nd: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def _ci(v, ci) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    lo, hi = (ci or (None, None))
    return f"{v:.3f} <span class=ci>[{_f(lo)}, {_f(hi)}]</span>"


def _json_for_script(obj) -> str:
    # "</" inside a <script> would end it early; also keep the document valid UTF-8
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _clean(obj):
    """NaN → None so the JSON is strict (browsers refuse NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _summary(info: dict, groups: dict) -> str:
    allg = groups.get("all", {})
    n_ok = info["n_ok"]
    corrected = allg.get("batch_correction") or {}
    how = ("95 % interval: the cases' spread and QC's own systematic error" if allg.get("systematic_error") is not None
           else "95 % bootstrap interval (the cases' spread only)")
    if isinstance(corrected.get("correction"), (int, float)):  # said, so that it is not a silent change
        how += (f"; corrected by {corrected['correction']:+.3f} for where this batch lies among the calibration "
                f"pairs (uncorrected {_f(allg.get('mean_dice_uncorrected'))})")
    share = f"{100 * info['n_review'] / n_ok:.0f} %" if n_ok else "–"
    cards = [
        ("cases", f"{info['n']}", f"{n_ok} judged, {info['n_error']} could not be read"),
        ("flagged for review", f"{info['n_review']}", f"{share} of judged cases have P(Dice ≥ {info['tau']:g}) < 0.5"),
        ("estimated mean Dice", _ci(allg.get("mean_dice"), allg.get("mean_dice_ci")), how),
        (f"estimated share Dice ≥ {info['tau']:g}", _ci(allg.get("share_pass"), allg.get("share_pass_ci")),
         "mean P(pass), 95 % interval"),
    ]
    if allg.get("true_mean_dice") is not None:
        cards.append(("true mean Dice", _f(allg.get("true_mean_dice")),
                      f"from the expert masks; true share ≥ τ {_f(allg.get('true_share_pass'))}"))
    shift = info.get("shift") or {}
    if isinstance(shift.get("score"), (int, float)):
        left_out = shift.get("unreadable")
        cards.append(("shift score", _f(shift["score"]), "share of images unlike the reference images "
                      f"(≈ {shift.get('expected_in_distribution', 0.05):g} for images like them)"
                      + (f"; {left_out} edited appearance cells left out" if left_out else "")))
    judge = info.get("judge") or {}
    if isinstance(judge.get("heldout_dice"), (int, float)):  # what most of each answer rests on
        epochs, trained = judge.get("epochs") or [], ""
        if epochs:
            span = f"{min(epochs)}" if min(epochs) == max(epochs) else f"{min(epochs)}–{max(epochs)}"
            trained = f"; trained {span} of {judge.get('planned_epochs')} epochs"
        cards.append(("QC's own segmenter", _f(judge["heldout_dice"]),
                      f"Dice on {judge.get('heldout_cases', '?')} held-out reference cases{trained}"))
    out = [f"<div class='note shift-warning'>{_e(shift['warning'])}</div>"] if shift.get("warning") else []
    if judge.get("note"):
        out.append(f"<div class='note judge-note'>{_e('QC may be weaker here: ' + judge['note'])}</div>")
    out.append("<div class=cards>")
    for title, value, sub in cards:
        out.append(f"<div class=card><div class=ct>{_e(title)}</div><div class=cv>{value}</div>"
                   f"<div class=cs>{_e(sub)}</div></div>")
    out.append("</div>")
    named = {k: v for k, v in groups.items() if k != "all"}
    if named:
        truth = any("true_mean_dice" in v for v in named.values())
        out.append("<details open><summary>per group (model, checkpoint, site)</summary><table class=groups>"
                   "<thead><tr><th>group</th><th>cases</th><th>estimated mean Dice [95 %]</th>"
                   f"<th>estimated share ≥ τ [95 %]</th>{'<th>true mean Dice</th><th>true share ≥ τ</th>' * truth}"
                   "</tr></thead><tbody>")
        for name, g in named.items():
            out.append(f"<tr><td>{_e(name)}</td><td>{g.get('n', '')}</td>"
                       f"<td>{_ci(g.get('mean_dice'), g.get('mean_dice_ci'))}</td>"
                       f"<td>{_ci(g.get('share_pass'), g.get('share_pass_ci'))}</td>"
                       + (f"<td>{_f(g.get('true_mean_dice'))}</td><td>{_f(g.get('true_share_pass'))}</td>"
                          if truth else "") + "</tr>")
        out.append("</tbody></table></details>")
    return "\n".join(out)


_METRICS = (("n", "cases", 0), ("pearson", "Pearson r", 3), ("spearman", "Spearman ρ", 3), ("mae", "MAE", 3),
            ("auroc", "AUROC (Dice < τ)", 3), ("aurc", "AURC", 3), ("eaurc", "E-AURC", 3), ("ece", "ECE of P(pass)", 3),
            ("sensitivity", "sensitivity", 3), ("specificity", "specificity", 3))


def _evaluation(overall: dict | None, plots: list[tuple[str, str]], tau: float) -> str:
    if not overall:
        return ""
    head = "".join(f"<th>{_e(t)}</th>" for _, t, _ in _METRICS)
    cells = "".join(f"<td>{_f(overall.get(k), nd) if nd else overall.get(k, '–')}</td>" for k, _, nd in _METRICS)
    imgs = "".join(f"<figure><img class=plot alt='{_e(t)}' src='{uri}'></figure>"
                   for t, uri in plots)
    return (f"<h2>How right was the QC? <small>(true masks given; failure = Dice &lt; {tau:g}; "
            "sensitivity = share of failures flagged)</small></h2>"
            f"<table class=metrics><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>"
            f"<div class=plots>{imgs}</div>")


_CSS = """
*{box-sizing:border-box}body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8}header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .meta{color:#b8c0d0;font-size:12px;margin-top:4px}main{padding:12px 24px}h2{font-size:16px;margin:18px 0 8px}
h2 small{font-weight:normal;color:#667}.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;
border-radius:6px;padding:10px 14px;min-width:190px;box-shadow:0 1px 2px #0002}.ct{color:#667;font-size:12px}
.cv{font-size:20px;font-weight:600}.cs{color:#889;font-size:11px}.ci{color:#778;font-size:12px;font-weight:normal}
table{border-collapse:collapse;background:#fff}th,td{padding:4px 8px;border-bottom:1px solid #e4e6eb;text-align:left;
vertical-align:middle}th{background:#eef0f4;font-weight:600;white-space:nowrap}table.groups,table.metrics{margin:6px 0}
details{margin:10px 0}summary{cursor:pointer;color:#345}.plots{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;padding:6px;border-radius:6px}img.plot{width:340px;display:block}
figcaption{font-size:12px;color:#667;text-align:center}.note{background:#fff4d6;border-left:4px solid #e0a800;
padding:6px 10px;margin:8px 0}.legend{font-size:12px;color:#445;margin:6px 0}.sw{display:inline-block;width:18px;
height:4px;margin:0 4px 2px 10px;vertical-align:middle}.controls{display:flex;flex-wrap:wrap;gap:10px;
align-items:center;margin:8px 0;background:#fff;padding:8px;border-radius:6px}.controls button{padding:3px 10px}
#cases th.sortable{cursor:pointer}#cases th.sortable:hover{background:#dfe3ea}#cases th .arrow{color:#889}
#cases td.num{text-align:right;font-variant-numeric:tabular-nums}#cases td.id{font-family:ui-monospace,monospace;
font-size:12px;min-width:130px;max-width:230px;overflow-wrap:anywhere}.flag{padding:1px 7px;border-radius:9px;
font-size:12px;font-weight:600;color:#fff}.flag-review{background:#d9822b}.flag-pass{background:#2e9e4f}.flag-error{background:#c8323c}
tr.row-error{background:#fff0f0}tr.row-review{background:#fffaf2}img.thumb,img.mosaic{display:block;cursor:zoom-in;
border-radius:3px}.sub{color:#778;font-size:11px}.err{color:#a0232c;font-size:12px;max-width:260px;margin-top:3px}
#zoom{display:none;position:fixed;inset:0;background:#000c;align-items:center;justify-content:center;z-index:9}
#zoom img{width:min(92vw,calc(var(--w)*4px));image-rendering:auto}#zoom.on{display:flex}
"""

# Plain JavaScript, no library: filter, sort, paginate, and build only the visible rows.
_JS = r"""
(function(){
const info = JSON.parse(document.getElementById('info').textContent);
const rows = JSON.parse(document.getElementById('rows').textContent);
const rank = {error:0, review:1, pass:2};
let st = {key:'priority', dir:1, page:0, size:50, filter:'all', q:''};
const $ = id => document.getElementById(id);
const esc = s => String(s == null ? '' : s).replace(/[&<>"']/g,
  c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
const num = (v, nd) => (v == null || !isFinite(v)) ? '–' : Number(v).toFixed(nd == null ? 3 : nd);
rows.forEach((r, i) => { r._i = i; r._rank = (r.flag in rank) ? rank[r.flag] : 1; });
function cmpNull(a, b){ // missing values sort last in either direction
  if (a == null && b == null) return 0; if (a == null) return 1; if (b == null) return -1; return null; }
function compare(a, b){
  if (st.key === 'priority') {
    return (a._rank - b._rank) || ((a.p_pass ?? 2) - (b.p_pass ?? 2)) || ((a.dice_pred ?? 2) - (b.dice_pred ?? 2))
      || (a._i - b._i);
  }
  const x = a[st.key], y = b[st.key];
  const n = cmpNull(x, y); if (n !== null) return n;
  const c = (typeof x === 'string') ? x.localeCompare(y) : x - y;
  return st.dir * c || (a._i - b._i);
}
function visible(){
  const q = st.q.toLowerCase();
  return rows.filter(r => {
    if (st.filter === 'attention' && r.flag === 'pass') return false;
    if (st.filter !== 'all' && st.filter !== 'attention' && r.flag !== st.filter) return false;
    return !q || r.id.toLowerCase().includes(q) || String(r.group).toLowerCase().includes(q);
  }).sort(compare);
}
function cell(r){
  const cols = [];
  cols.push(`<td class=id>${esc(r.id)}</td><td>${esc(r.group)}</td>`);
  cols.push(`<td><span class="flag flag-${esc(r.flag)}">${esc(r.flag)}</span>` +
    (r.error ? `<div class=err>${esc(r.error)}</div>` : '') + '</td>');
  cols.push(`<td class=num>${num(r.p_pass, 2)}</td>`);
  cols.push(`<td class=num>${num(r.dice_pred)}<div class=sub>${r.lo == null ? '' : '[' + num(r.lo, 2) + ', ' +
    num(r.hi, 2) + ']'}</div></td>`);
  if (info.labels.length) cols.push(`<td class=sub>${info.labels.map(k => esc(k) + ': ' +
    num((r.per_label || {})[k], 2)).join('<br>')}</td>`);
  if (info.has_truth) cols.push(`<td class=num>${num(r.dice_true)}</td>`);
  if (info.has_hd95) cols.push(`<td class=num>${num(r.hd95, 1)}</td>`);
  cols.push(`<td>${r.thumb ? `<img class=thumb alt="${esc(r.id)}" src="${r.thumb}">` +
    (r.slice != null ? `<div class=sub>slice z = ${r.slice}</div>` : '') : '<span class=sub>no picture</span>'}</td>`);
  if (info.has_mosaic) cols.push(`<td>${r.mosaic ? `<img class=mosaic alt="slices of ${esc(r.id)}" src="${r.mosaic}">
    <div class=sub>z = ${esc((r.mosaic_slices || []).join(', '))}</div>` : ''}</td>`);
  return cols.join('');
}
function render(){
  const v = visible();
  const pages = Math.max(1, Math.ceil(v.length / st.size));
  st.page = Math.min(st.page, pages - 1);
  const part = v.slice(st.page * st.size, (st.page + 1) * st.size);
  $('tbody').innerHTML = part.map((r, j) =>
    `<tr class="case-row row-${esc(r.flag)}"><td class=num>${st.page * st.size + j + 1}</td>${cell(r)}</tr>`).join('');
  $('count').textContent = `${v.length} of ${rows.length} cases · page ${st.page + 1} of ${pages}`;
  $('prev').disabled = st.page === 0; $('next').disabled = st.page >= pages - 1;
  document.querySelectorAll('#cases th.sortable').forEach(th => {
    th.querySelector('.arrow').textContent = th.dataset.key === st.key ? (st.key === 'priority' ? '▲' :
      (st.dir > 0 ? '▲' : '▼')) : '';
  });
}
document.querySelectorAll('#cases th.sortable').forEach(th => th.addEventListener('click', () => {
  const k = th.dataset.key;
  if (st.key === k) st.dir = -st.dir; else { st.key = k; st.dir = 1; }
  st.page = 0; render();
}));
$('filter').addEventListener('change', e => { st.filter = e.target.value; st.page = 0; render(); });
$('search').addEventListener('input', e => { st.q = e.target.value; st.page = 0; render(); });
$('size').addEventListener('change', e => { st.size = +e.target.value; st.page = 0; render(); });
$('prev').addEventListener('click', () => { st.page--; render(); });
$('next').addEventListener('click', () => { st.page++; render(); });
$('tbody').addEventListener('click', e => {
  if (e.target.tagName !== 'IMG') return;
  const z = $('zoom'); const im = z.querySelector('img');
  im.src = e.target.src; im.style.setProperty('--w', e.target.naturalWidth); z.classList.add('on');
});
$('zoom').addEventListener('click', () => $('zoom').classList.remove('on'));
render();
document.body.dataset.rendered = 'yes';
})();
"""


def _legend(info: dict) -> str:
    from segqc.report.thumbs import CANDIDATE_COLOURS, PGT_COLOURS, TRUTH_COLOURS

    n = max(1, len(info["labels"]))

    def labels(colours) -> str:  # one swatch per label
        return "".join(f"<span class=sw style='background:rgb{tuple(colours[i % len(colours)])}'></span>"
                       for i in range(n))

    parts = [f"the candidate mask {labels(CANDIDATE_COLOURS)} (lightly filled)"]
    if info.get("has_pgt"):
        parts.append(f"the pseudo ground truth {labels(PGT_COLOURS)}")
    if info["has_truth"]:
        parts.append(f"the true mask {labels(TRUTH_COLOURS)}")
    text = "Pictures: the image with the contours of " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "")
    text += parts[-1] + "."
    if info.get("has_error"):
        text += (" Right: the error map, red to yellow where the candidate is likely wrong, with the candidate's "
                 "contour in white.")
    if info["has_mosaic"]:
        text += (" 3D: the axial slice where candidate and pseudo ground truth disagree most, and a mosaic of slices "
                 "evenly spaced across the structure.")
    if len(info["labels"]) > 1:
        text += f" One colour shade per label ({', '.join(map(str, info['labels']))})."
    return f"<div class=legend>{text} Click a picture to enlarge it.</div>"


def render_html(*, info: dict, records: list[dict], groups: dict, overall: dict | None,
                plots: list[tuple[str, str]]) -> str:
    """The whole report as one HTML string."""
    th = ["<th class=sortable data-key=priority title='flagged and failed cases first, then lowest P(pass)'>"
          "# <span class=arrow></span></th>",
          "<th class=sortable data-key=id>case <span class=arrow></span></th>",
          "<th class=sortable data-key=group>group <span class=arrow></span></th>",
          "<th class=sortable data-key=_rank>flag / problem <span class=arrow></span></th>",
          f"<th class=sortable data-key=p_pass>P(Dice ≥ {info['tau']:g}) <span class=arrow></span></th>",
          "<th class=sortable data-key=dice_pred>predicted Dice <span class=arrow></span></th>"]
    if info["labels"]:
        th.append("<th>per label</th>")
    if info["has_truth"]:
        th.append("<th class=sortable data-key=dice_true>true Dice <span class=arrow></span></th>")
    if info["has_hd95"]:
        th.append("<th class=sortable data-key=hd95>HD95 (mm) <span class=arrow></span></th>")
    th.append("<th>picture</th>")
    if info["has_mosaic"]:
        th.append("<th>slices</th>")
    meta = " · ".join(_e(x) for x in (
        f"{info['n']} cases from {info['source']}", f"method {info['method']}" if info["method"] else "",
        f"bundle {info['bundle']}" if info["bundle"] else "", f"τ = {info['tau']:g}",
        f"segqc {info['segqc']}", info["created"]) if x)
    note = f"<div class=note>{_e(info['note'])}</div>" if info["note"] else ""
    return f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width,initial-scale=1">
<title>{_e(info['title'])}</title><style>{_CSS}</style></head>
<body><header><h1>{_e(info['title'])}</h1><div class=meta>{meta}</div></header><main>
{note}
<h2>Summary</h2>
{_summary(info, groups)}
{_evaluation(overall, plots, info['tau'])}
<h2>Cases <small>(flagged and unreadable cases first; click a column to sort)</small></h2>
{_legend(info)}
<div class=controls>
 <label>show <select id=filter><option value=all>all cases</option>
 <option value=attention>review + errors</option><option value=review>review</option>
 <option value=pass>pass</option><option value=error>errors</option></select></label>
 <label>find <input id=search type=search placeholder="case id or group"></label>
 <label>per page <select id=size><option>25</option><option selected>50</option><option>100</option>
 <option>250</option></select></label>
 <button id=prev>◀ previous</button><button id=next>next ▶</button> <span id=count></span>
</div>
<table id=cases><thead><tr>{''.join(th)}</tr></thead><tbody id=tbody></tbody></table>
<noscript><p class=note>The case table needs JavaScript (it is inline; nothing is downloaded).</p></noscript>
</main><div id=zoom><img alt=enlarged></div>
<script type="application/json" id=info>{_json_for_script(_clean(info))}</script>
<script type="application/json" id=rows>{_json_for_script(_clean(records))}</script>
<script>{_JS}</script>
</body></html>
"""
