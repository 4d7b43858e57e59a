"""GET /dashboard: one account's live view (deals, active holds, recent purchases), and the RQ
queue page behind the same sign-in.

Sign-in: the account's API secret through the form, or `/dashboard?api_secret=...` once, which
signs in and redirects to the clean URL. The signed session cookie holds the account id and a
keyed digest of the account's current secret hash, so rotating the secret ends every dashboard
session made with the old one (at once in this process, within a few seconds in others:
`AccountService.stored`). The page polls `/dashboard/data.json` every second (plain JavaScript,
static/dashboard.js beside this file); every asset is served by the app. Its data comes from the
domain (`ReportService.overview`).

Queue page: `rq-dashboard` (works with Flask 3.1 and RQ 3.0; it needs `six`, which it does not
declare) mounted at /dashboard/rq/, read-only: its delete, empty, compact and requeue actions
are refused here. Jobs we enqueue carry a description made of ids only, and failed webhook
deliveries say nothing but a status or an error class, because the queue is shared by every
account.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from app.accounts.service import AccountRef, hash_secret
from app.store.models import utcnow
from app.web.services import services

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates")

POLL_MS = 1000
SESSION_HOURS = 12


def _binding(secret_hash: str) -> str:
    """What the cookie keeps of the secret: a digest keyed with SECRET_KEY (neither the secret
    nor its stored hash)."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, secret_hash.encode(), hashlib.sha256).hexdigest()[:32]


def signed_in() -> AccountRef | None:
    """The account of this dashboard session, if it is still valid."""
    if "dashboard_account_checked" in g:
        return g.dashboard_account
    account_id = session.get("account_id")
    found = None
    if isinstance(account_id, int):
        stored = services().accounts.stored(account_id)
        if stored is not None and hmac.compare_digest(session.get("binding", ""), _binding(stored.secret_hash)):
            found = AccountRef(account_id, stored.name)
    g.dashboard_account_checked = True
    g.dashboard_account = found
    return found


def _csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


def _check_csrf() -> None:
    expected = session.get("csrf")
    if not expected or not hmac.compare_digest(expected, request.form.get("csrf", "")):
        abort(400, description="The form expired; reload the page and try again.")


def _sign_in(secret: str | None) -> AccountRef | None:
    account = services().accounts.authenticate(secret)
    if account is None:
        return None
    csrf = session.get("csrf")
    session.clear()
    session.permanent = True
    session["account_id"] = account.id
    session["binding"] = _binding(hash_secret(secret))
    session["csrf"] = csrf or secrets.token_urlsafe(24)
    return account


def _sign_in_page(error: str | None = None, status: int = 200):
    return (
        render_template("dashboard/sign_in.html", error=error, csrf=_csrf_token()),
        status,
        {"Cache-Control": "no-store"},
    )


@bp.get("")
def index():
    if "api_secret" in request.args:
        # Once: sign in, then send the browser to a URL without the secret in it.
        if _sign_in(request.args.get("api_secret")) is None:
            return _sign_in_page("That API secret is not valid.", 401)
        return redirect(url_for("dashboard.index"), 303)
    account = signed_in()
    if account is None:
        return _sign_in_page()
    data = services().reports.overview(account.id, utcnow())
    return (
        render_template(
            "dashboard/dashboard.html",
            account=account,
            data=data,
            poll_ms=POLL_MS,
            csrf=_csrf_token(),
        ),
        200,
        {"Cache-Control": "no-store"},
    )


@bp.post("/sign-in")
def sign_in():
    _check_csrf()
    if _sign_in(request.form.get("api_secret", "").strip()) is None:
        return _sign_in_page("That API secret is not valid.", 401)
    return redirect(url_for("dashboard.index"), 303)


@bp.post("/sign-out")
def sign_out():
    _check_csrf()
    session.clear()
    return redirect(url_for("dashboard.index"), 303)


@bp.get("/data.json")
def data():
    account = signed_in()
    if account is None:
        response = jsonify(status="error", error="unauthorized", message="Sign in to the dashboard first.")
        response.status_code = 401
        return response
    response = jsonify(services().reports.overview(account.id, utcnow()))
    response.headers["Cache-Control"] = "no-store"
    return response


# -- the RQ queue page ---------------------------------------------------------------------------

QUEUE_PREFIX = "/dashboard/rq"
#: rq-dashboard endpoints that change the queue; the page is read-only here.
QUEUE_WRITES = frozenset(
    {
        "rq_dashboard.delete_job_view",
        "rq_dashboard.requeue_job_view",
        "rq_dashboard.requeue_all",
        "rq_dashboard.empty_queue",
        "rq_dashboard.compact_queue",
    }
)


def _guard_queue_page():
    """before_request of the rq_dashboard blueprint (not of the app: no cost to API requests)."""
    if signed_in() is None:
        if request.method in ("GET", "HEAD") and not request.path.endswith(".json"):
            return redirect(url_for("dashboard.index"), 303)
        abort(401, description="Sign in to the dashboard first.")
    if request.endpoint in QUEUE_WRITES or request.method not in ("GET", "HEAD"):
        abort(405, description="The queue page is read-only.")
    return None


def mount_queue_page(app: Flask) -> None:
    import rq_dashboard

    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", app.config.get("RQ_REDIS_URL") or app.config["REDIS_URL"])
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = True
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", 2500)
    rq_dashboard.web.setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=QUEUE_PREFIX)
    # First among the blueprint's hooks: nothing of rq-dashboard runs for a visitor not signed in.
    app.before_request_funcs.setdefault(rq_dashboard.blueprint.name, []).insert(0, _guard_queue_page)


def init_app(app: Flask) -> None:
    # The session cookie is only the dashboard's: not readable by scripts, not sent on requests
    # from other sites' forms, and good for one working day.
    app.config.update(
        SESSION_COOKIE_NAME="oe_dashboard",
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )
    app.register_blueprint(bp)
    mount_queue_page(app)
