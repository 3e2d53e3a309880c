"""The dashboard's HTML: the sign-in page and the page shell that the scripts fill in.

Everything dynamic is escaped here; the scripts build the live views with DOM calls
(``textContent``), never from HTML strings. No inline script or style: the pages' CSP allows
scripts and styles from the router only."""

from __future__ import annotations

from html import escape

from llmlb_plugins.dashboard.assets import Asset, asset_url
from llmlb_plugins.dashboard.sessions import CSRF_FIELD

# What a page may load and where it may send: the router itself, images as data:/blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# (x-content-type-options: nosniff is on every router response: llmlb_core's request log.)
PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}

# The sizes the playground offers: "auto" (the model's native size) and OpenAI's.
SIZES = ("auto", "256x256", "512x512", "1024x1024", "1792x1024", "1024x1792", "1536x1024", "1024x1536")


def _head(assets: dict[str, Asset], title: str, extra: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        f'<link rel="icon" href="{asset_url(assets, "favicon.svg")}" type="image/svg+xml">'
        f'<link rel="stylesheet" href="{asset_url(assets, "dashboard.css")}">{extra}</head>'
    )


def login_page(assets: dict[str, Asset], login_token: str, message: str | None = None) -> str:
    notice = f'<p class="error" id="login-error" role="alert">{escape(message)}</p>' if message else ""
    return (
        _head(assets, "llmlb - sign in")
        + '<body class="login"><main><h1>llmlb dashboard</h1>'
        + notice
        + '<form method="post" action="/dashboard/login" id="login-form">'
        + f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(login_token)}">'
        + '<label>Admin API key <input type="password" name="key" id="login-key" required '
        + 'autocomplete="current-password" autofocus></label>'
        + '<button type="submit">Sign in</button></form>'
        + '<p class="hint">An admin-scope key: the one <code>llmlb serve</code> printed at first '
        + "start, <code>LLMLB_ADMIN_KEY</code>, or one made with "
        + "<code>llmlb keys create NAME --scope admin</code>. It stays on the router; the browser "
        + "gets a session cookie.</p></main></body></html>"
    )


def _options(values: tuple[str, ...]) -> str:
    return "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)


def dashboard_page(assets: dict[str, Asset], csrf: str) -> str:
    script = f'<script type="module" src="{asset_url(assets, "app.js")}"></script>'
    meta = f'<meta name="csrf-token" content="{escape(csrf)}">'
    return (
        _head(assets, "llmlb dashboard", meta + script)
        + "<body><header><h1>llmlb</h1><nav>"
        + '<a href="#overview" data-tab="overview">Overview</a>'
        + '<a href="#models" data-tab="models">Models</a>'
        + '<a href="#keys" data-tab="keys">Keys</a>'
        + '<a href="#playground" data-tab="playground">Playground</a></nav>'
        + '<span id="conn-status" class="muted"></span>'
        + '<form method="post" action="/dashboard/logout" class="logout">'
        + f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">'
        + '<button type="submit">Sign out</button></form></header><main>'
        + OVERVIEW
        + MODELS
        + KEYS
        + playground_section()
        + "</main></body></html>"
    )


OVERVIEW = (
    '<section id="overview" data-panel="overview">'
    '<div class="stats"><div><b id="stat-nodes">-</b><span>nodes online</span></div>'
    '<div><b id="stat-slots">-</b><span>busy / slots</span></div>'
    '<div><b id="stat-queue">-</b><span>queued requests</span></div>'
    '<div><b id="stat-rate">-</b><span>API requests/s</span></div></div>'
    "<h2>Queue depth and request rate</h2>"
    '<canvas id="chart" width="760" height="180" aria-label="queue depth and request rate"></canvas>'
    '<p class="legend"><span class="swatch queue"></span>queue depth '
    '<span class="swatch rate"></span>API requests per second (/v1, last 3 minutes)</p>'
    "<h2>Nodes</h2>"
    '<table id="nodes-table"><thead><tr><th>Node</th><th>Status</th><th>Slots</th><th>Queued</th>'
    "<th>Loaded models</th><th>Models</th><th>Running jobs</th><th>Done</th><th>Last seen</th></tr>"
    '</thead><tbody></tbody></table><p class="empty" id="nodes-empty" hidden>No node has registered.</p>'
    "<h2>Endpoints</h2>"
    '<table id="endpoints-table"><thead><tr><th>Endpoint</th><th>Status</th><th>URL</th><th>Kind</th>'
    "<th>Models</th><th>In flight</th><th>Last error</th></tr></thead><tbody></tbody></table>"
    '<p class="empty" id="endpoints-empty" hidden>No OpenAI-compatible endpoint is registered.</p>'
    "</section>"
)

MODELS = (
    '<section id="models" data-panel="models" hidden><h2>Models</h2>'
    '<table id="models-table"><thead><tr><th>Model</th><th>Status</th><th>Capabilities</th>'
    "<th>Runs on</th><th>Details</th><th>Description</th></tr></thead><tbody></tbody></table>"
    '<p class="empty" id="models-empty" hidden>No model is registered or served.</p></section>'
)

KEYS = (
    '<section id="keys" data-panel="keys" hidden><h2>Create a key</h2>'
    '<form id="key-form" class="row">'
    '<label>Name <input name="name" id="key-name" required maxlength="200"></label>'
    "<fieldset><legend>Scopes</legend>"
    '<label><input type="checkbox" name="scope" value="api" checked> api</label>'
    '<label><input type="checkbox" name="scope" value="node"> node</label>'
    '<label><input type="checkbox" name="scope" value="admin"> admin</label></fieldset>'
    '<label>Bound to node <input name="node_id" placeholder="any (node keys only)"></label>'
    '<label>Expires in days <input name="expires_days" type="number" min="0.01" step="any" '
    'placeholder="never"></label>'
    '<button type="submit">Create key</button></form>'
    '<p class="error" id="key-error" role="alert" hidden></p>'
    '<div id="new-key" class="new-key" hidden><p>New key <b id="new-key-name"></b>, shown once: '
    'copy it now.</p><code id="new-key-value"></code></div>'
    '<h2>Keys</h2><table id="keys-table"><thead><tr><th>Name</th><th>Id</th><th>Prefix</th>'
    "<th>Scopes</th><th>Node</th><th>Created</th><th>Expires</th><th>State</th><th></th></tr>"
    "</thead><tbody></tbody></table></section>"
)


def playground_section() -> str:
    return (
        '<section id="playground" data-panel="playground" hidden><h2>Image playground</h2>'
        '<form id="pg-form">'
        '<fieldset class="modes"><legend>Mode</legend>'
        '<label><input type="radio" name="mode" value="generate" checked> Generate</label>'
        '<label><input type="radio" name="mode" value="edit"> Edit with a mask</label>'
        '<label><input type="radio" name="mode" value="variation"> Variations</label></fieldset>'
        '<div class="row"><label>Model <select name="model" id="pg-model"></select></label>'
        f'<label>Size <select name="size" id="pg-size">{_options(SIZES)}</select></label>'
        '<label>Steps <input type="number" name="steps" id="pg-steps" min="1" max="150" '
        'placeholder="model default"></label>'
        '<label>Seed <input type="number" name="seed" id="pg-seed" min="0" max="2147483647" '
        'placeholder="random"></label>'
        '<label>Images <input type="number" name="n" id="pg-n" min="1" max="10" value="1"></label></div>'
        '<label class="wide" id="pg-prompt-row">Prompt <textarea name="prompt" id="pg-prompt" rows="2">'
        "</textarea></label>"
        '<div id="pg-source" hidden><label>Source image <input type="file" id="pg-file" '
        'accept="image/png,image/jpeg,image/webp"></label> <span class="muted">or use a result below'
        "</span>"
        '<div id="pg-mask-tools" class="row"><label>Brush <input type="range" id="pg-brush" min="1" '
        'max="64" value="12"></label><button type="button" id="pg-clear-mask">Clear mask</button>'
        '<span class="muted">Paint the area to redraw.</span></div>'
        '<canvas id="pg-canvas" width="256" height="256"></canvas></div>'
        '<div class="row"><button type="submit" id="pg-submit">Generate</button>'
        '<span id="pg-status" class="muted"></span></div>'
        '<p class="error" id="pg-error" role="alert" hidden></p></form>'
        '<div id="pg-results" class="results"></div></section>'
    )
