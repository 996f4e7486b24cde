"""index.html for `lrpgraph explain --html` and `lrpgraph demo`: one row per image with its input, every
heatmap and overlay, the prediction with its probability, and (where known) the true class.

The page links only files inside out_dir (the input is shown from <name>.input.png when explain wrote
it), so the folder can be moved or sent elsewhere as a whole. A colour bar says what the colours mean.
"""

import html
import os
from pathlib import Path
from urllib.parse import quote

from lrpgraph.notice import PATENT_FOOTER
from lrpgraph.runtime import render

STYLE = """
body{font-family:sans-serif;margin:16px;color:#222}
table{border-collapse:collapse} th{text-align:left;background:#eee;padding:6px;font-size:13px}
td{padding:6px;vertical-align:top;border-bottom:1px solid #ddd;font-size:13px}
td img{width:160px;height:auto;image-rendering:pixelated;display:block}
tr.wrong td{background:#fff0f0} .flag{color:#b00;font-weight:bold} .ok{color:#070}
.legend{display:flex;align-items:center;gap:8px;margin:8px 0 4px}
.bar{width:320px;height:16px;border:1px solid #888}
.note{font-size:13px;color:#444;max-width:900px}
small{color:#666}
"""


def footer() -> str:
    """The patent notice every page lrpgraph writes ends with."""
    return f'<footer style="color:#666;font-size:0.8em;margin-top:2em">{html.escape(PATENT_FOOTER)}</footer>'


def _link(target, out_dir):
    """A URL for target relative to out_dir (an absolute file:// URL where no relative path exists)."""
    try:
        return quote(Path(os.path.relpath(os.path.abspath(target), os.path.abspath(out_dir))).as_posix())
    except ValueError:  # another drive on Windows
        return Path(os.path.abspath(target)).as_uri()


def colour_bar(cmap: str = "bwr") -> str:
    """HTML: the colour map as a bar from -max|R| to +max|R|, with its meaning."""
    stops = render.COLORMAPS.get(cmap, render.COLORMAPS["bwr"])
    colours = ", ".join(f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)})" for r, g, b in stops)
    return (
        '<div class="legend"><span>&minus;max |R|<br><small>negative</small></span>'
        f'<div class="bar" style="background:linear-gradient(to right, {colours})"></div>'
        "<span>+max |R|<br><small>positive</small></span></div>"
        '<p class="note">Colour: relevance of each pixel for the explained class (summed over colour channels). '
        + ("Red is positive (evidence for the class), blue negative (evidence against), white zero. "
           if cmap == "bwr" else "")
        + "Each heatmap is scaled by its own largest |relevance|, so colours compare pixels within one image, "
        "not across images. Probability: the model's softmax probability of the predicted class.</p>"
    )


def _image(src, alt, npy=None):
    extra = f'<br><a href="{html.escape(quote(npy))}">raw .npy</a>' if npy else ""
    return f'<td><img src="{html.escape(src)}" alt="{html.escape(alt)}">{extra}</td>'


def _outputs_of(records):
    """The heatmap output names the records have files for, in order."""
    names = []
    for record in records:
        for key in record.get("outputs", {}):
            for suffix in ("_overlay_png", "_png", "_npy"):
                if key.endswith(suffix) and key not in ("input_png", "overlay_png"):
                    name = key[: -len(suffix)]
                    if name not in names:
                        names.append(name)
                    break
    return names or ["relevance"]


def _text(record, truth):
    top = (record.get("top5") or [{}])[0]
    predicted = record.get("predicted_label") or record.get("predicted")
    probability = top.get("probability")
    lines = [f"predicted: <b>{html.escape(str(predicted))}</b>",
             "probability: " + ("n/a" if probability is None else f"{probability:.3f}")]
    explained = record.get("explained_label") or record.get("explained")
    lines.append(f"explained: {html.escape(str(explained if explained is not None else 'all classes'))}")
    if truth is not None:
        mark = ('<span class="ok">correct</span>' if truth == predicted
                else '<span class="flag">&#10007; misclassified</span>')
        lines.insert(0, f"true: <b>{html.escape(str(truth))}</b> {mark}")
    score = record.get("explained_score")
    if score is not None:  # next to the sum it is spread over (LRP conserves it up to the biases' share)
        lines.append(f"explained {record.get('explained_score_kind', 'logit')}: {score:.4g}")
    sums = record.get("relevance_sum")
    for name, value in (sums.items() if isinstance(sums, dict) else [("", sums)]):
        shown = "n/a" if value is None else f"{value:.4g}"
        lines.append(f"relevance sum{' ' + html.escape(name) if name else ''}: {shown}")
    return "<td>" + "<br>".join(lines) + "</td>"


def write_index_html(out_dir: str | os.PathLike, records: list, title: str = "lrpgraph explanations", cmap: str = "bwr",
                     truth: dict | None = None, notes: list | tuple = ()) -> None:
    """Write out_dir/index.html; truth {file: true class label} adds the true class and flags mistakes; notes:
    lines shown above the table (runtime.describe: the heatmaps' composite, the preprocessing)."""
    truth = {str(k): v for k, v in (truth or {}).items()}
    outputs = _outputs_of(records)
    single = outputs == ["relevance"]
    overlays = any(("overlay_png" if single else f"{o}_overlay_png") in r.get("outputs", {})
                   for r in records for o in outputs)
    heads = ["image", "input"] + [f"heatmap{'' if single else ' ' + o}" for o in outputs]
    if overlays:
        heads += [f"overlay{'' if single else ' ' + o}" for o in outputs]
    heads.append("prediction" + (" / true class" if truth else ""))
    rows = []
    for record in records:
        files = record.get("outputs", {})
        name = os.path.basename(record["file"])
        source = quote(files["input_png"]) if "input_png" in files else _link(record["file"], out_dir)
        cells = [f"<td>{html.escape(name)}</td>", _image(source, "input")]
        for o in outputs:
            png = files.get(f"{o}_png")
            cells.append(_image(quote(png), f"heatmap {o}", files.get(f"{o}_npy")) if png else "<td></td>")
        if overlays:
            for o in outputs:
                png = files.get("overlay_png" if single else f"{o}_overlay_png")
                cells.append(_image(quote(png), f"overlay {o}") if png else "<td></td>")
        true = truth.get(str(record["file"]))
        cells.append(_text(record, true))
        predicted = record.get("predicted_label") or record.get("predicted")
        wrong = true is not None and true != predicted
        rows.append(f'<tr{" class=wrong" if wrong else ""}>{"".join(cells)}</tr>')
    wrong = sum(1 for r in records if truth.get(str(r["file"])) not in (None, r.get("predicted_label")))
    summary = (f"<p>{len(records)} images" + (f", {wrong} misclassified (rows in red)" if truth else "") + ".</p>"
               + "".join(f'<p class="note">{html.escape(str(n))}</p>' for n in notes))
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{colour_bar(cmap)}{summary}<table>\n"
        "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>\n"
        + "\n".join(rows) + f"\n</table>{footer()}</body></html>\n"
    )
    return render.save_text(Path(out_dir) / "index.html", page)
