"""Strings from outside (file names, labels, token strings, model metadata) put into a page lrpgraph writes.

text() escapes for element content and quoted attribute values; script_json() serialises data for a
<script type="application/json"> block: '<', '>', '&' and the JavaScript line separators are written as
\\u escapes, so no string in the data can close the block or start markup, and JSON.parse gives it back."""

import html
import json

_SCRIPT_SAFE = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def text(value: object) -> str:
    """value as text in HTML (element content or a quoted attribute)."""
    return html.escape(str(value), quote=True)


def script_json(data: object, element_id: str) -> str:
    """A <script type="application/json" id=...> block holding data; read it with
    JSON.parse(document.getElementById(id).textContent)."""
    payload = json.dumps(data, ensure_ascii=False).translate(_SCRIPT_SAFE)
    return f'<script type="application/json" id="{text(element_id)}">{payload}</script>'
