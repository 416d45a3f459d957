"""Make the asv HTML report render without internet, with assets from Debian packages.

    python -m benchmarks.offline_html [HTML_DIR]     # default: asv.conf.json's html_dir
    python -m benchmarks.offline_html --packages     # the Debian packages it needs

``asv publish`` writes an ``index.html`` whose ``<script src>`` and stylesheet ``<link href>``
point at CDNs (jQuery, flot, bootstrap, ...). The repository holds none of those libraries:
``make bench`` installs Debian's packages of them (``DEBIAN_PACKAGES``, with ``apt-get`` when
missing), and this copies the files from ``/usr/share/javascript`` to ``HTML_DIR/vendor/`` and
rewrites each CDN reference to the local copy (dropping the ``integrity``/``crossorigin``
attributes, which name the CDN files). Debian ships flot 4, whose ``jquery.flot.pack.js``
already holds the time, selection and categories plugins: their own tags point at an empty
script, and the one plugin Debian lacks (bar ordering) at a no-op stand-in written here, so
grouped bars overlap instead of sitting side by side. Then every HTML, JS and CSS file of the
report is checked for an asset still loaded over http(s); one found exits 1, naming it.

Example::

    >>> tag = '<script src="https://code.jquery.com/jquery-3.3.1.min.js" integrity="sha256-x" crossorigin="anonymous"></script>'
    >>> localize(tag)[0]
    '<script src="vendor/jquery.min.js"></script>'
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JS = Path("/usr/share/javascript")

#: The Debian packages the report's libraries come from (``make bench`` installs them).
DEBIAN_PACKAGES = ["libjs-jquery", "libjs-jquery-flot", "libjs-bootstrap",
                   "libjs-jquery-stupidtable", "node-blueimp-md5"]

#: Files copied into the report's vendor/ folder: name there -> where Debian installs it.
FILES = {
    "jquery.min.js": JS / "jquery/jquery.min.js",
    "jquery.flot.pack.js": JS / "jquery-flot/jquery.flot.pack.js",
    "stupidtable.min.js": JS / "jquery-stupidtable/stupidtable.min.js",
    "md5.min.js": JS / "blueimp-md5/md5.min.js",
    "bootstrap/js/bootstrap.min.js": JS / "bootstrap/js/bootstrap.min.js",
    "bootstrap/css/bootstrap.min.css": JS / "bootstrap/css/bootstrap.min.css",
    "bootstrap/fonts": JS / "bootstrap/fonts",
}

#: Scripts written here: an empty one for plugins the flot bundle already holds, and a stand-in
#: for the bar-ordering plugin Debian does not package.
SHIMS = {
    "in-flot-pack.js": "/* this plugin is part of jquery.flot.pack.js */\n",
    "flot4-legend.css": (
        "/* flot 4 draws its legend as SVG and leaves the colours to a stylesheet flot ships;\n"
        "   these are ours. */\n"
        ".legendLayer .background { fill: rgba(255, 255, 255, 0.85); "
        "stroke: rgba(0, 0, 0, 0.6); stroke-width: 1; }\n"),
    "flot-orderbars-stand-in.js": (
        "/* Stand-in for the flot-orderbars plugin, which Debian does not package: it accepts\n"
        "   the bars.order option and leaves bars where flot draws them. */\n"
        "(function ($) {\n"
        "  $.plot.plugins.push({init: function () {}, options: {series: {bars: {order: null}}},\n"
        "                       name: 'orderBars', version: 'stand-in'});\n"
        "})(jQuery);\n"),
}

#: The end of a CDN URL -> the local file (relative to the report's vendor/ folder).
LOCAL = {
    "jquery-3.3.1.min.js": "jquery.min.js",
    "flot/0.8.3/jquery.flot.min.js": "jquery.flot.pack.js",
    "flot/0.8.3/jquery.flot.time.min.js": "in-flot-pack.js",
    "flot/0.8.3/jquery.flot.selection.min.js": "in-flot-pack.js",
    "flot/0.8.3/jquery.flot.categories.min.js": "in-flot-pack.js",
    "flot-orderbars@1.0.0/js/jquery.flot.orderBars.js": "flot-orderbars-stand-in.js",
    "stupidtable/1.0.1/stupidtable.min.js": "stupidtable.min.js",
    "blueimp-md5/2.19.0/js/md5.min.js": "md5.min.js",
    "bootstrap@3.1.1/dist/js/bootstrap.min.js": "bootstrap/js/bootstrap.min.js",
    "bootstrap@3.1.1/dist/css/bootstrap.min.css": "bootstrap/css/bootstrap.min.css",
}

_TAG = re.compile(r"<(script|link)\b[^>]*>", re.IGNORECASE)
_REMOTE_ATTR = re.compile(r'\b(src|href)\s*=\s*"(https?://[^"]+)"', re.IGNORECASE)
_DROP = re.compile(r'\s+(integrity|crossorigin|referrerpolicy)\s*=\s*"[^"]*"', re.IGNORECASE)
_CSS_URL = re.compile(r"url\(\s*['\"]?(https?://[^)'\"]+)", re.IGNORECASE)
_IMPORT = re.compile(r"""\bimport\s*\(?\s*['"](https?://[^'"]+)""")


#: asv's own copy of the axis-label plugin: flot 4 has one built in, so it would draw each
#: label twice.
_ASV_AXISLABELS = 'src="jquery.flot.axislabels.js"'


def localize(html: str) -> tuple[str, list[str]]:
    """Point every CDN ``<script src>``/``<link href>`` of ``html`` at ``vendor/``; return the
    new text and the URLs no vendored file matches."""
    unknown: list[str] = []

    def fix(tag: re.Match) -> str:
        text = tag.group(0)
        if tag.group(1).lower() == "link" and "stylesheet" not in text.lower():
            return text
        attr = _REMOTE_ATTR.search(text)
        if attr is None:
            return text
        url = attr.group(2)
        local = next((path for end, path in LOCAL.items() if url.endswith(end)), None)
        if local is None:
            unknown.append(url)
            return text
        text = text.replace(url, f"vendor/{local}")
        return _DROP.sub("", text)

    html = _TAG.sub(fix, html).replace(_ASV_AXISLABELS, 'src="vendor/in-flot-pack.js"')
    stylesheet = '<link rel="stylesheet" href="vendor/flot4-legend.css">'
    if stylesheet not in html:
        html = html.replace("</head>", f"    {stylesheet}\n</head>", 1)
    return html, unknown


def remote_assets(text: str, suffix: str) -> list[str]:
    """URLs that ``text`` (an .html, .js or .css file) would load over the network."""
    found = _CSS_URL.findall(text) + _IMPORT.findall(text)
    if suffix == ".html":
        for tag in _TAG.finditer(text):
            t = tag.group(0)
            if tag.group(1).lower() == "link" and "stylesheet" not in t.lower():
                continue
            found += [m.group(2) for m in _REMOTE_ATTR.finditer(t)]
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--packages"]:  # for make bench: what to apt-get install
        print(" ".join(DEBIAN_PACKAGES))
        return 0
    if argv:
        html_dir = Path(argv[0])
    else:
        conf = json.loads((ROOT / "asv.conf.json").read_text())
        html_dir = ROOT / conf.get("html_dir", "html")
    if not (html_dir / "index.html").exists():
        print(f"offline_html: no {html_dir / 'index.html'}; run asv publish first", file=sys.stderr)
        return 1
    missing = [str(path) for path in FILES.values() if not path.exists()]
    if missing:
        print("offline_html: missing " + ", ".join(missing) + "; install the Debian packages "
              + " ".join(DEBIAN_PACKAGES) + " (make bench does)", file=sys.stderr)
        return 1
    vendor = html_dir / "vendor"
    for name, source in FILES.items():
        target = vendor / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)
    for name, text in SHIMS.items():
        (vendor / name).write_text(text, encoding="utf-8")
    problems = []
    for path in sorted(html_dir.rglob("*")):
        if path.suffix not in (".html", ".js", ".css") or "vendor" in path.relative_to(html_dir).parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".html":
            new, unknown = localize(text)
            if new != text:
                path.write_text(new, encoding="utf-8")
            text = new
        problems += [f"{path}: {url}" for url in remote_assets(text, path.suffix)]
    if problems:
        print("offline_html: these assets still load from the network (map them to a local "
              "file in LOCAL):\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 1
    print(f"offline_html: {html_dir} loads no asset from the network (local copies in "
          f"{vendor})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
